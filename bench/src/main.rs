//! `mesh-bench`: `make bench` runs `mesh-bench run`; `ceiling-server` is the RPC-ceiling server it
//! starts as a child process.
#![allow(clippy::print_stdout)] // the summary line is for the terminal
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mesh-bench", about = "Reserve against the RPC ceiling, raw EVALSHA and PostgreSQL row locks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every case and writes report.json, the plot and BENCHMARKS.md.
    Run {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// The release inventory-mesh binary.
        #[arg(long, default_value = "target/release/inventory-mesh")]
        mesh_binary: String,
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        #[arg(long, env = "BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        #[arg(long, default_value = "BENCHMARKS.md")]
        markdown: PathBuf,
        /// h2load, to cross-check the RPC ceiling (skipped when it does not run).
        #[arg(long)]
        h2load: Option<PathBuf>,
    },
    /// Serves only gRPC health on a port, with the services' server settings.
    CeilingServer {
        #[arg(long)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                rounds,
                seconds,
                concurrency,
                mesh_binary,
                redis_url,
                postgres_url,
                out,
                markdown,
                h2load,
            } => {
                let h2load = h2load.filter(|path| {
                    std::process::Command::new(path).arg("--version").output().is_ok_and(|o| o.status.success())
                });
                let redis_port =
                    redis_url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(6379);
                let config = mesh_bench::Config {
                    rounds,
                    seconds,
                    concurrency,
                    mesh_binary: Some(mesh_binary),
                    redis_url,
                    redis_port,
                    postgres_url,
                    out_dir: out,
                    markdown: Some(markdown),
                    smoke: false,
                    h2load,
                };
                let report = mesh_bench::run(&config).await?;
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({
                        "reserve_vs_evalsha": report.reserve_vs_evalsha,
                        "reserve_vs_ceiling": report.reserve_vs_ceiling,
                        "reserve_vs_pg_hot": report.reserve_vs_pg_hot,
                        "reserve_vs_pg_random": report.reserve_vs_pg_random,
                        "reserve_p50_ms_unloaded": report.reserve_p50_ms_unloaded,
                        "reserve_p99_ms_at_70pct": report.reserve_p99_ms_at_70pct,
                        "reserve_cpu_us_per_op": report.reserve_cpu_us_per_op,
                        "failed": report.failed,
                    }))?
                );
                anyhow::ensure!(
                    !report.failed,
                    "the run is invalid: reconcile differences, oversold units or product errors"
                );
                Ok(())
            }
            Command::CeilingServer { port } => {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
                mesh_bench::product::serve_ceiling(listener).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
