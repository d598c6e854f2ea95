//! `make bench`: the product's Reserve measured against its limits and against what users would
//! build instead, in one run on one machine, each baseline interleaved with the product (A B A B …)
//! over several rounds; medians reported with their spread.
//!
//! - [`loadgen`]: the Rust load generator (closed and open loop, HDR histograms).
//! - [`baselines`]: `redis-benchmark` EVALSHA of the reserve script, `pgbench` row-lock reservations.
//! - [`product`]: the mesh (Redis + PostgreSQL), its data, one operation per case, the RPC ceiling.
//! - [`report`]: `target/bench/report.json`, `BENCHMARKS.md` and the latency-vs-load plot.
pub mod baselines;
pub mod loadgen;
pub mod procs;
pub mod product;
pub mod report;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;
use serde::Serialize;

use crate::{
    loadgen::{RunStats, closed_loop, open_loop},
    product::{Mesh, Pick},
};

/// What to run and how long.
#[derive(Debug, Clone)]
pub struct Config {
    pub rounds: usize,
    /// Length of each closed-loop run.
    pub seconds: f64,
    pub concurrency: usize,
    /// The release `inventory-mesh` binary; None = run the mesh inside this process (smoke).
    pub mesh_binary: Option<String>,
    pub redis_url: String,
    pub redis_port: u16,
    /// PostgreSQL server to create the bench databases on.
    pub postgres_url: String,
    pub out_dir: PathBuf,
    /// Where BENCHMARKS.md goes (None: not written).
    pub markdown: Option<PathBuf>,
    /// Fewer SKUs and shorter runs (the smoke version in `make test`).
    pub smoke: bool,
    /// h2load, to cross-check the RPC ceiling (None: not measured).
    pub h2load: Option<PathBuf>,
}

/// One measured case in one round.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Sample {
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    pub ops: u64,
    /// Server CPU (utime + stime of the server processes) per operation, µs.
    pub cpu_us_per_op: f64,
    /// The product cases' CPU per operation split by process, µs: the mesh, redis-server, every
    /// postgres process, and the load generator itself (not a server: not in `cpu_us_per_op`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_split_us: Option<CpuSplit>,
}

/// CPU per operation of each process group during a product run, µs.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct CpuSplit {
    pub mesh: f64,
    pub redis: f64,
    pub postgres: f64,
    pub load_generator: f64,
}

/// A case over all rounds: the median of each figure, and every round's value.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Case {
    pub kind: String,
    pub description: String,
    pub median: Sample,
    /// (min, max) throughput across rounds.
    pub throughput_spread: (f64, f64),
    pub rounds: Vec<Sample>,
}

/// One open-loop point.
#[derive(Debug, Clone, Serialize)]
pub struct LoadPoint {
    pub system: String,
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// Everything `make bench` measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub environment: BTreeMap<String, String>,
    pub config: BTreeMap<String, String>,
    pub cases: BTreeMap<String, Case>,
    pub open_loop: Vec<LoadPoint>,
    pub reconcile_differences: u64,
    pub units_oversold: i64,
    pub failed: bool,
    pub reserve_vs_evalsha: f64,
    pub reserve_vs_ceiling: f64,
    pub reserve_vs_pg_hot: f64,
    pub reserve_vs_pg_random: f64,
    pub reserve_p50_ms_unloaded: f64,
    pub reserve_p99_ms_at_70pct: f64,
    pub reserve_cpu_us_per_op: f64,
    pub elapsed_s: f64,
}

fn sample(stats: &RunStats, cpu_seconds: f64) -> Sample {
    Sample {
        cpu_split_us: None,
        throughput: stats.throughput(),
        p50_ms: stats.ms(0.5),
        p99_ms: stats.ms(0.99),
        p999_ms: stats.ms(0.999),
        errors: stats.errors,
        ops: stats.ops,
        cpu_us_per_op: if stats.ops == 0 { 0.0 } else { cpu_seconds * 1e6 / stats.ops as f64 },
    }
}

fn external(e: &baselines::External, cpu_seconds: f64) -> Sample {
    Sample {
        cpu_split_us: None,
        throughput: e.throughput,
        p50_ms: e.p50_ms,
        p99_ms: e.p99_ms,
        p999_ms: e.p999_ms,
        errors: e.errors,
        ops: e.ops,
        cpu_us_per_op: if e.ops == 0 { 0.0 } else { cpu_seconds * 1e6 / e.ops as f64 },
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() { 0.0 } else { values[values.len() / 2] }
}

struct Collector {
    cases: BTreeMap<String, Case>,
}

impl Collector {
    fn add(&mut self, name: &str, kind: &str, description: &str, s: Sample) {
        eprintln!(
            "bench: {name:<22} {:>10.0}/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}  cpu {:>6.1} µs/op",
            s.throughput, s.p50_ms, s.p99_ms, s.errors, s.cpu_us_per_op
        );
        let case = self.cases.entry(name.to_owned()).or_insert_with(|| Case {
            kind: kind.into(),
            description: description.into(),
            ..Case::default()
        });
        case.rounds.push(s);
    }

    fn finish(mut self) -> BTreeMap<String, Case> {
        for case in self.cases.values_mut() {
            let pick = |f: fn(&Sample) -> f64, rounds: &[Sample]| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
            let r = &case.rounds;
            case.median = Sample {
                throughput: pick(|s| s.throughput, r),
                p50_ms: pick(|s| s.p50_ms, r),
                p99_ms: pick(|s| s.p99_ms, r),
                p999_ms: pick(|s| s.p999_ms, r),
                errors: r.iter().map(|s| s.errors).sum(),
                ops: r.iter().map(|s| s.ops).sum(),
                cpu_us_per_op: pick(|s| s.cpu_us_per_op, r),
                cpu_split_us: r.iter().any(|s| s.cpu_split_us.is_some()).then(|| {
                    let part = |f: fn(&CpuSplit) -> f64| {
                        median(&mut r.iter().filter_map(|s| s.cpu_split_us.as_ref().map(f)).collect::<Vec<_>>())
                    };
                    CpuSplit {
                        mesh: part(|c| c.mesh),
                        redis: part(|c| c.redis),
                        postgres: part(|c| c.postgres),
                        load_generator: part(|c| c.load_generator),
                    }
                }),
            };
            let min = r.iter().map(|s| s.throughput).fold(f64::INFINITY, f64::min);
            let max = r.iter().map(|s| s.throughput).fold(0.0, f64::max);
            case.throughput_spread = (min, max);
        }
        self.cases
    }
}

/// Measures `op` closed-loop and the servers' CPU meanwhile.
async fn measure<F, Fut>(mesh_pids: &[u32], concurrency: usize, seconds: f64, op: F) -> Sample
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let groups = |me: f64| {
        [
            procs::total_cpu(mesh_pids, &[]),
            procs::total_cpu(&[], &["redis-server"]),
            procs::total_cpu(&[], &["postgres"]),
            me,
        ]
    };
    let before = groups(procs::cpu_seconds(std::process::id()));
    let stats = closed_loop(concurrency, Duration::from_secs_f64(seconds), op).await;
    let after = groups(procs::cpu_seconds(std::process::id()));
    let used: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let mut s = sample(&stats, used[0] + used[1] + used[2]);
    if stats.ops > 0 && !mesh_pids.is_empty() {
        let per_op = |seconds: f64| seconds * 1e6 / stats.ops as f64;
        s.cpu_split_us = Some(CpuSplit {
            mesh: per_op(used[0]),
            redis: per_op(used[1]),
            postgres: per_op(used[2]),
            load_generator: per_op(used[3]),
        });
    }
    s
}

/// The URL with `sslmode=disable` unless it names an sslmode itself.
fn without_tls(url: &str) -> String {
    if url.contains("sslmode=") {
        return url.to_owned();
    }
    format!("{url}{}sslmode=disable", if url.contains('?') { '&' } else { '?' })
}

/// Runs the whole benchmark.
///
/// # Errors
/// A server or tool that is missing or fails.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&config.out_dir)?;
    let run_id = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // Every PostgreSQL client of the run (the mesh, pgbench) talks plain TCP: on loopback, TLS
    // would only add encryption CPU to both sides (a server with ssl=on is otherwise picked up by
    // sslmode=prefer, the default of libpq and sqlx alike).
    let database = without_tls(&product::fresh_database(&config.postgres_url, &format!("mesh_{run_id}")).await?);
    let pg_bench_db = without_tls(&product::fresh_database(&config.postgres_url, &format!("pgb_{run_id}")).await?);
    {
        use sea_orm::{ConnectionTrait, Database};
        let db = Database::connect(&pg_bench_db).await?;
        db.execute_unprepared(baselines::PG_SCHEMA).await.context("PostgreSQL baseline schema")?;
        db.close().await.ok();
    }
    let vacuum = autovacuum_stand_in(&config.postgres_url, &[database.clone(), pg_bench_db.clone()]).await?;
    let prefix = format!("{run_id}:");
    eprintln!("bench: starting the mesh (Redis + PostgreSQL) and stocking it");
    let (mesh, mut child, running) = match &config.mesh_binary {
        Some(binary) => {
            let (mesh, child) = product::spawn_mesh(binary, &database, &config.redis_url, &prefix).await?;
            (mesh, Some(child), None)
        }
        None => {
            let (mesh, running) = product::start_in_process(&database, &config.redis_url, &prefix).await?;
            (mesh, None, Some(running))
        }
    };
    product::stock(&mesh).await?;
    // The RPC ceiling: a health-only server built like the services, in this process (smoke) or
    // in a child process of this binary.
    let [ceiling_port] = product::free_ports::<1>();
    let mut ceiling_child = None;
    if config.mesh_binary.is_some() {
        ceiling_child = Some(
            std::process::Command::new(std::env::current_exe()?)
                .args(["ceiling-server", "--port", &ceiling_port.to_string()])
                .stdout(std::process::Stdio::null())
                .spawn()?,
        );
    } else {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", ceiling_port)).await?;
        tokio::spawn(product::serve_ceiling(listener));
    }
    product::wait_for(ceiling_port).await?;
    let ceiling_pids: Vec<u32> = ceiling_child.iter().map(|c| c.id()).collect();
    let random_skus = if config.smoke { 1_000 } else { 100_000 };
    let sha = baselines::prepare_redis(config.redis_port, random_skus)?;
    let pg_dir = config.out_dir.join("pgbench");
    std::fs::create_dir_all(&pg_dir)?;

    let (c, secs) = (config.concurrency, config.seconds);
    let evalsha_requests = |rate: f64| ((rate * secs) as u64).max(1_000);
    let mut col = Collector { cases: BTreeMap::new() };
    let mut reserve_max = 0.0f64;
    for round in 0..config.rounds {
        eprintln!("bench: round {} of {}", round + 1, config.rounds);
        // A: the RPC ceiling; B: Reserve, uniform SKUs, 1 line.
        let s = measure(&ceiling_pids, c, secs, product::ceiling_op(product::channel_to(ceiling_port)?)).await;
        let ceiling_rate = s.throughput;
        col.add("rpc_ceiling", "baseline", "unary health check, same server stack and load generator", s);
        if let Some(h2load) = &config.h2load {
            let before = procs::total_cpu(&ceiling_pids, &[]);
            let requests = ((ceiling_rate * secs) as u64).max(1_000);
            let e = baselines::h2load_ceiling(h2load, ceiling_port, c, requests, &pg_dir)?;
            let cpu = procs::total_cpu(&ceiling_pids, &[]) - before;
            col.add(
                "rpc_ceiling_h2load",
                "baseline",
                "the same health check driven by h2load (p50 column = mean)",
                external(&e, cpu),
            );
        }
        let s = measure(&mesh.pids, c, secs, product::reserve_op(&mesh, "u1", Pick::Uniform, 1)).await;
        reserve_max = reserve_max.max(s.throughput);
        col.add("reserve_uniform_1", "product", "Reserve, 1 line, uniform over 10k SKUs", s);
        // A: EVALSHA hot 1-line; B: Reserve hot 1-line.
        let before = procs::total_cpu(&[], &["redis-server"]);
        let e = baselines::evalsha(config.redis_port, &sha, 1, true, c, evalsha_requests(20_000.0), random_skus)?;
        col.add(
            "evalsha_hot_1",
            "baseline",
            "redis-benchmark EVALSHA reserve.lua, hot SKU, 1 line",
            external(&e, procs::total_cpu(&[], &["redis-server"]) - before),
        );
        let s = measure(&mesh.pids, c, secs, product::reserve_op(&mesh, "h1", Pick::Hot, 1)).await;
        col.add("reserve_hot_1", "product", "Reserve, 1 line, one hot SKU", s);
        // A: EVALSHA random 1-line and 3-line; B: Reserve uniform 3-line.
        let before = procs::total_cpu(&[], &["redis-server"]);
        let e = baselines::evalsha(config.redis_port, &sha, 1, false, c, evalsha_requests(20_000.0), random_skus)?;
        col.add(
            "evalsha_random_1",
            "baseline",
            "redis-benchmark EVALSHA reserve.lua, random SKUs, 1 line",
            external(&e, procs::total_cpu(&[], &["redis-server"]) - before),
        );
        let before = procs::total_cpu(&[], &["redis-server"]);
        let e = baselines::evalsha(config.redis_port, &sha, 3, false, c, evalsha_requests(10_000.0), random_skus)?;
        col.add(
            "evalsha_random_3",
            "baseline",
            "redis-benchmark EVALSHA reserve.lua, random SKUs, 3 lines",
            external(&e, procs::total_cpu(&[], &["redis-server"]) - before),
        );
        let s = measure(&mesh.pids, c, secs, product::reserve_op(&mesh, "u3", Pick::Uniform, 3)).await;
        col.add("reserve_uniform_3", "product", "Reserve, 3 lines, uniform over 10k SKUs", s);
        // A: PostgreSQL row locks, hot 1-line and random 3-line, synchronous commit on and off.
        let pg_duration = Duration::from_secs_f64(secs.max(1.0));
        for (name, script, sync, what) in [
            (
                "pg_hot_sync",
                baselines::PG_HOT,
                true,
                "pgbench counter row per cell, hot SKU, 1 line, synchronous_commit=on",
            ),
            (
                "pg_hot_async",
                baselines::PG_HOT,
                false,
                "pgbench counter row per cell, hot SKU, 1 line, synchronous_commit=off",
            ),
            (
                "pg_random_3_sync",
                baselines::PG_RANDOM3,
                true,
                "pgbench lock 3 random cells, sum live holds, insert, synchronous_commit=on",
            ),
            (
                "pg_random_3_async",
                baselines::PG_RANDOM3,
                false,
                "pgbench lock 3 random cells, sum live holds, insert, synchronous_commit=off",
            ),
        ] {
            let before = procs::total_cpu(&[], &["postgres"]);
            let e = baselines::pgbench(&pg_bench_db, script, c, pg_duration, sync, None, &pg_dir)?;
            col.add(name, "baseline", what, external(&e, procs::total_cpu(&[], &["postgres"]) - before));
            // B after each A.
            let s = measure(&mesh.pids, c, secs, product::reserve_op(&mesh, "h1b", Pick::Hot, 1)).await;
            col.add("reserve_hot_1", "product", "Reserve, 1 line, one hot SKU", s);
        }
    }
    // Once: the durable record of a Reserve alone (pgbench, the same two statements, same database).
    let before = procs::total_cpu(&[], &["postgres"]);
    let e = baselines::pgbench(
        &database,
        baselines::PG_RECORD_ONLY,
        c,
        Duration::from_secs_f64(secs.max(1.0)),
        false,
        None,
        &pg_dir,
    )?;
    col.add(
        "pg_record_only",
        "breakdown",
        "pgbench: only the two durable writes one Reserve makes (claim, then HELD record), one per statement, synchronous_commit=off (Reserve batches them)",
        external(&e, procs::total_cpu(&[], &["postgres"]) - before),
    );
    // Once: the other product cases.
    eprintln!("bench: other product cases");
    let s = measure(&mesh.pids, 1, secs, product::reserve_op(&mesh, "unloaded", Pick::Uniform, 1)).await;
    col.add("reserve_unloaded", "product", "Reserve, 1 line, one client (unloaded latency)", s);
    let s = measure(&mesh.pids, c, secs, product::reserve_op(&mesh, "z1", Pick::Zipf, 1)).await;
    col.add("reserve_zipf_1", "product", "Reserve, 1 line, Zipf(1.1) over the uniform SKUs", s);
    let s = measure(&mesh.pids, c, secs, product::reserve_op(&mesh, "u10", Pick::Uniform, 10)).await;
    col.add("reserve_uniform_10", "product", "Reserve, 10 lines, uniform over 10k SKUs", s);
    let s = measure(&mesh.pids, c, secs, product::atp_op(&mesh)).await;
    col.add("atp_read", "product", "GetCellAtp, 1 cell", s);
    let s = measure(&mesh.pids, c, secs, product::source_op(&mesh)).await;
    col.add(
        "source_order",
        "product",
        "SourceOrder, 3 lines, a network of 300 nodes (20 in the smoke test), plan + reserve",
        s,
    );
    let s = measure(&mesh.pids, c.min(8), secs, product::ingest_op(&mesh)).await;
    col.add("ingest_100", "product", "IngestEvents, 100 receipts per call (events/s = 100 × calls/s)", s);
    // Open loop: Reserve at 25/50/70/90 % of its own maximum, and PostgreSQL at the same rates.
    let mut open = Vec::new();
    for fraction in [0.25, 0.5, 0.7, 0.9] {
        let rate = (reserve_max * fraction).max(10.0);
        let stats = open_loop(
            rate,
            Duration::from_secs_f64(secs),
            product::reserve_op(&mesh, &format!("open{fraction}"), Pick::Uniform, 1),
        )
        .await;
        eprintln!("bench: open loop Reserve at {rate:.0}/s: p50 {:.3} ms p99 {:.3} ms", stats.ms(0.5), stats.ms(0.99));
        open.push(LoadPoint {
            system: "reserve".into(),
            offered_per_s: rate,
            achieved_per_s: stats.throughput(),
            p50_ms: stats.ms(0.5),
            p99_ms: stats.ms(0.99),
            errors: stats.errors,
        });
        let e = baselines::pgbench(
            &pg_bench_db,
            baselines::PG_HOT,
            c,
            Duration::from_secs_f64(secs.max(1.0)),
            true,
            Some(rate),
            &pg_dir,
        )?;
        open.push(LoadPoint {
            system: "pg_hot_sync".into(),
            offered_per_s: rate,
            achieved_per_s: e.throughput,
            p50_ms: e.p50_ms,
            p99_ms: e.p99_ms,
            errors: e.errors,
        });
    }
    // Every product run ends with a reconcile: nothing oversold, no hold lost.
    let rec = inventory_mesh::reconcile::reconcile(mesh.availability.clone(), mesh.reservation.clone()).await?;
    let reconcile_differences = rec.differences.len() as u64;
    let units_oversold = oversold(&mesh).await?;
    if let Some(child) = child.as_mut() {
        child.kill().ok();
        child.wait().ok();
    }
    if let Some(mut ceiling) = ceiling_child {
        ceiling.kill().ok();
        ceiling.wait().ok();
    }
    if let Some(running) = running {
        running.stop().await;
    }
    if let Some(vacuum) = vacuum {
        vacuum.abort();
    }
    baselines::clean_redis(config.redis_port)?;
    let cases = col.finish();
    let m = |name: &str| cases.get(name).map(|c| c.median.clone()).unwrap_or_default();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let p99_at_70 = open.iter().filter(|p| p.system == "reserve").nth(2).map(|p| p.p99_ms).unwrap_or(0.0);
    let mut report = Report {
        environment: environment(config).await,
        config: BTreeMap::from([
            ("rounds".into(), config.rounds.to_string()),
            ("seconds_per_run".into(), config.seconds.to_string()),
            ("concurrency".into(), config.concurrency.to_string()),
            ("smoke".into(), config.smoke.to_string()),
        ]),
        reserve_vs_evalsha: ratio(m("reserve_uniform_1").throughput, m("evalsha_random_1").throughput),
        reserve_vs_ceiling: ratio(m("reserve_uniform_1").throughput, m("rpc_ceiling").throughput),
        reserve_vs_pg_hot: ratio(m("reserve_hot_1").throughput, m("pg_hot_sync").throughput),
        reserve_vs_pg_random: ratio(m("reserve_uniform_3").throughput, m("pg_random_3_sync").throughput),
        reserve_p50_ms_unloaded: m("reserve_unloaded").p50_ms,
        reserve_p99_ms_at_70pct: p99_at_70,
        reserve_cpu_us_per_op: m("reserve_uniform_1").cpu_us_per_op,
        cases,
        open_loop: open,
        reconcile_differences,
        units_oversold,
        failed: reconcile_differences > 0 || units_oversold > 0,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    report.failed |= report.cases.values().filter(|c| c.kind == "product").any(|c| c.median.errors > 0);
    std::fs::write(config.out_dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(config.out_dir.join("latency.svg"), report::svg(&report))?;
    if let Some(markdown) = &config.markdown {
        std::fs::write(markdown, report::markdown(&report, "docs/bench-latency.svg"))?;
        if let Some(dir) = markdown.parent() {
            std::fs::create_dir_all(dir.join("docs")).ok();
            std::fs::write(dir.join("docs/bench-latency.svg"), report::svg(&report))?;
        }
    }
    Ok(report)
}

/// Units held or committed beyond on_hand anywhere the bench touched (must be 0).
async fn oversold(mesh: &Mesh) -> anyhow::Result<i64> {
    use mesh_proto::{
        availability::v1::{GetCellAtpRequest, availability_service_client::AvailabilityServiceClient},
        common::v1::CellRef,
    };
    let mut client = AvailabilityServiceClient::new(mesh.availability.clone());
    let mut cells = vec![CellRef { sku: "HOT".into(), location_id: "L1".into() }];
    cells.extend(
        (0..mesh.skus)
            .step_by((mesh.skus / 100).max(1))
            .map(|i| CellRef { sku: format!("U{i}"), location_id: "L1".into() }),
    );
    let mut over = 0;
    for chunk in cells.chunks(100) {
        for q in client.get_cell_atp(GetCellAtpRequest { cells: chunk.to_vec() }).await?.into_inner().cells {
            over += (q.held_units + q.committed_units - q.on_hand_units).max(0);
        }
    }
    Ok(over)
}

/// Every 2 s, `VACUUM (ANALYZE)` of the run's databases when the server runs without autovacuum
/// (as CI servers often do): production PostgreSQL keeps statistics and dead index entries in
/// check by itself, and without that the planner prices every table as empty and every lookup of
/// a changed row wades through its dead versions, so any PostgreSQL workload, the product's and
/// the baselines' alike, slows down as it runs. Returns the task, or None when autovacuum is on.
async fn autovacuum_stand_in(
    admin_url: &str,
    databases: &[String],
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    use sea_orm::{ConnectionTrait, Database};
    let admin = Database::connect(admin_url).await?;
    let row =
        admin.query_one_raw(sea_orm::Statement::from_string(admin.get_database_backend(), "SHOW autovacuum")).await?;
    admin.close().await.ok();
    let on = row.and_then(|r| r.try_get_by_index::<String>(0).ok()).is_some_and(|v| v == "on");
    if on {
        return Ok(None);
    }
    eprintln!(
        "bench: the server runs without autovacuum; vacuuming and analyzing the run's databases every 2 s instead"
    );
    let mut connections = Vec::new();
    for url in databases {
        connections.push(Database::connect(url).await?);
    }
    Ok(Some(tokio::spawn(async move {
        loop {
            for db in &connections {
                if let Err(error) = db.execute_unprepared("VACUUM (ANALYZE)").await {
                    eprintln!("bench: VACUUM (ANALYZE) failed: {error}");
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })))
}

async fn environment(config: &Config) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("cpu".into(), procs::cpu_model());
    env.insert("cores".into(), std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_default());
    env.insert("kernel".into(), procs::command_line("uname", &["-r"]));
    let redis_info = procs::command_line("redis-cli", &["-p", &config.redis_port.to_string(), "INFO", "server"]);
    let version = redis_info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("").trim().to_owned();
    env.insert("redis".into(), version);
    let save = procs::command_line("redis-cli", &["-p", &config.redis_port.to_string(), "CONFIG", "GET", "save"]);
    let aof = procs::command_line("redis-cli", &["-p", &config.redis_port.to_string(), "CONFIG", "GET", "appendonly"]);
    env.insert(
        "redis_persistence".into(),
        format!("save={:?} appendonly={}", save.lines().nth(1).unwrap_or(""), aof.lines().nth(1).unwrap_or("")),
    );
    let psql = |sql: &str| procs::command_line("psql", &[&config.postgres_url, "-Atc", sql]);
    env.insert("postgres".into(), psql("SHOW server_version"));
    env.insert(
        "postgres_persistence".into(),
        format!(
            "fsync={} synchronous_commit={} wal_level={}",
            psql("SHOW fsync"),
            psql("SHOW synchronous_commit"),
            psql("SHOW wal_level")
        ),
    );
    env.insert(
        "postgres_autovacuum".into(),
        match psql("SHOW autovacuum").as_str() {
            "off" => {
                "off on the server; the harness runs VACUUM (ANALYZE) of its databases every 2 s in its place".into()
            }
            other => other.to_owned(),
        },
    );
    env.insert(
        "postgres_clients".into(),
        format!(
            "plain TCP on loopback (sslmode=disable for the mesh and pgbench; server ssl={}); wal_writer_delay={}",
            psql("SHOW ssl"),
            psql("SHOW wal_writer_delay")
        ),
    );
    env.insert(
        "mesh".into(),
        if config.mesh_binary.is_some() {
            "inventory-mesh run (release), Redis + PostgreSQL".into()
        } else {
            "in-process (smoke)".into()
        },
    );
    env
}
