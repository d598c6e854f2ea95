//! `inventory-mesh`: run the whole mesh (`run`), one service (`serve`), migrations (`migrate`),
//! a replay of real orders (`replay`) or a reconcile check (`reconcile`).
#![allow(clippy::print_stdout)] // the command's output is for the terminal

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use inventory_mesh::{
    mesh::{self, ServiceKind},
    reconcile, replay,
};
use service_kit::{config::Settings, grpc::peer_channel};

#[derive(Parser)]
#[command(
    name = "inventory-mesh",
    version,
    about = "Inventory Mesh: availability, reservation, sourcing and replenishment over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Starts all four services in one process (the embedded default needs nothing else).
    Run,
    /// Serves one service (what the Helm chart runs).
    Serve {
        /// availability, reservation, sourcing or replenishment
        service: ServiceKind,
    },
    /// Runs every service's migrations against the configured database.
    Migrate,
    /// Replays real orders through a running mesh (or one it starts itself).
    Replay {
        /// Folder of the Olist subset.
        #[arg(long, default_value = "../shared/data/olist-ecommerce-subset")]
        dataset: PathBuf,
        /// Initial stock = units each seller really sold × this factor.
        #[arg(long, default_value_t = 1.0)]
        stock_factor: f64,
        /// Replay only the first N orders by purchase time.
        #[arg(long)]
        limit: Option<usize>,
        /// Where to write the JSON report.
        #[arg(long, default_value = "target/replay/report.json")]
        report: PathBuf,
        /// Prefix of SKU, order and event ids (default: a fresh one per run).
        #[arg(long)]
        run_id: Option<String>,
        /// Always start an in-process mesh instead of using a running one.
        #[arg(long)]
        standalone: bool,
    },
    /// Compares live counters with durable records on a running mesh; exits 0 when they agree, 1 on
    /// any difference, 2 when the check could not run (bad target, mesh unreachable).
    Reconcile {
        /// HOST or HOST:PORT of the mesh (PORT = availability, reservation on PORT+1, as `make run`
        /// lays them out); default: the configured peers.
        #[arg(long)]
        target: Option<String>,
    },
    /// Rebuilds the Redis counters (positions, holds, commitments) from the durable store after
    /// Redis lost its data; safe beside a running mesh. Prints one JSON line.
    Rebuild,
    /// Load tools against a running mesh.
    Load {
        #[command(subcommand)]
        scenario: LoadScenario,
    },
}

#[derive(Subcommand)]
enum LoadScenario {
    /// A flash sale: U units, N single-unit buyers, C in flight; prints one JSON line last.
    FlashSale {
        /// Units of each SKU on sale (0 or more).
        #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i64).range(0..))]
        units: i64,
        /// Buyers, each reserving one unit of every SKU (1 or more).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        buyers: u64,
        /// Reservations in flight at a time (1 to 10000).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        concurrency: u32,
        /// SKUs per reservation (lines, 1 to 100).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        lines: u32,
        /// HOST or HOST:PORT of the mesh (PORT = availability, reservation on PORT+1, as `make run`
        /// lays them out); default: the configured peers.
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A check says "differences" with 1, so it says "could not check" with 2 (as diff(1) does).
    let failed = ExitCode::from(if matches!(cli.command, Command::Reconcile { .. }) { 2 } else { 1 });
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return failed;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return failed;
        }
    };
    match runtime.block_on(dispatch(cli.command, settings)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            failed
        }
    }
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => serve(settings, &ServiceKind::ALL, true).await,
        Command::Serve { service } => serve(settings, &[service], false).await,
        Command::Migrate => {
            let db = service_kit::db::connect(&settings.database).await.context("cannot open the database")?;
            mesh::migrate(&db).await.context("migration failed")?;
            println!("migrations applied to {}", redact(&settings.database.url));
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { dataset, stock_factor, limit, report, run_id, standalone } => {
            let options = replay::ReplayOptions {
                dataset,
                stock_factor,
                limit,
                run_id: run_id.unwrap_or_else(|| format!("r{}", chrono::Utc::now().format("%Y%m%d%H%M%S"))),
                show_progress: true,
            };
            run_replay(settings, options, &report, standalone).await
        }
        Command::Load { scenario: LoadScenario::FlashSale { units, buyers, concurrency, lines, target } } => {
            let (availability, reservation) = peers(&settings, target.as_deref())?;
            let (concurrency, lines) = (concurrency as usize, lines as usize);
            let sale = inventory_mesh::load::FlashSale {
                units,
                buyers,
                concurrency,
                lines,
                run_id: format!("flash{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f")),
            };
            eprintln!(
                "flash sale: {units} units x {lines} SKU(s), {buyers} buyers, {concurrency} in flight, against {reservation}"
            );
            let report = inventory_mesh::load::flash_sale(
                &sale,
                peer_channel(&availability, &settings.peers)?,
                peer_channel(&reservation, &settings.peers)?,
            )
            .await?;
            if let Some(error) = &report.first_error {
                eprintln!("{} of {} reservations failed; the first: {error}", report.errors, report.attempts);
            }
            println!("{}", serde_json::to_string(&report)?);
            Ok(if report.oversold_units == 0 && report.errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Rebuild => {
            if settings.is_embedded_engine() {
                anyhow::bail!(
                    "the embedded counter engine is rebuilt by `inventory-mesh run` at every start; rebuild is for Redis (set REDIS_URL)"
                );
            }
            let db = service_kit::db::connect(&settings.database).await.context("cannot open the database")?;
            mesh::migrate(&db).await.context("migration failed")?;
            let engine = mesh::connect_engine(&settings).await?;
            let report = inventory_mesh::rebuild::ensure(&engine, &db, true).await?.context("rebuild")?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile { target } => {
            let (availability, reservation) = peers(&settings, target.as_deref())?;
            let availability = peer_channel(&availability, &settings.peers)?;
            let reservation = peer_channel(&reservation, &settings.peers)?;
            let report = reconcile::reconcile(availability, reservation)
                .await
                .map_err(|status| inventory_mesh::rpc_error("ReconcileCounters", &status))?;
            for d in &report.differences {
                let cell = d.cell.as_ref().map(|c| format!("{}@{}", c.sku, c.location_id)).unwrap_or_default();
                println!(
                    "DIFFERENCE {cell} {}: counter {} expected {} ({})",
                    d.field, d.counter_value, d.expected_value, d.detail
                );
            }
            println!(
                "reconcile: {} cells, {} reservations checked on {} + {}: {} difference(s)",
                report.cells_checked,
                report.reservations_checked,
                report.counter_engine,
                report.durable_store,
                report.differences.len()
            );
            Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// The availability and reservation addresses a tool talks to: `--target HOST[:PORT]` (PORT the
/// availability port, default 50051, reservation on the next one) or the configured peers.
fn peers(settings: &Settings, target: Option<&str>) -> anyhow::Result<(String, String)> {
    let Some(given) = target else {
        return Ok((settings.peers.availability.clone(), settings.peers.reservation.clone()));
    };
    anyhow::ensure!(
        !given.starts_with("https://"),
        "--target {given}: TLS is not spoken by these tools; give HOST[:PORT] of a plaintext port"
    );
    let target = given.trim_start_matches("http://").trim_end_matches('/');
    // An IPv6 host is written in brackets: [::1] or [::1]:7000.
    let (host, port) = match target.rfind(':') {
        Some(colon) if !target.ends_with(']') => {
            let port: u16 = target[colon + 1..]
                .parse()
                .ok()
                .filter(|p| *p < u16::MAX)
                .with_context(|| format!("--target {given}: the port must be a number below 65535"))?;
            (&target[..colon], port)
        }
        _ => (target, 50051),
    };
    anyhow::ensure!(!host.is_empty() && !host.contains('/'), "--target {given}: give HOST or HOST:PORT");
    Ok((format!("http://{host}:{port}"), format!("http://{host}:{}", port + 1)))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

async fn serve(settings: Settings, kinds: &[ServiceKind], print_help: bool) -> anyhow::Result<ExitCode> {
    let telemetry = service_kit::telemetry::init("inventory-mesh", &settings.telemetry);
    // Refused before anything is opened or bound (no SQLite file is left behind).
    mesh::check_counters_shared(&settings, kinds)?;
    let db = service_kit::db::connect(&settings.database)
        .await
        .with_context(|| format!("cannot open the database {}", redact(&settings.database.url)))?;
    if !service_kit::db::is_postgres(&settings.database.url) || kinds.len() == ServiceKind::ALL.len() {
        // The embedded default migrates itself; production runs `inventory-mesh migrate` (Helm hook).
        mesh::migrate(&db).await.context("migration failed")?;
    }
    let mut listeners = Vec::new();
    for kind in kinds {
        let addr = kind.listen_addr(&settings);
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for {kind}"))?;
        listeners.push((*kind, listener));
    }
    let running = mesh::start(settings.clone(), listeners, db.clone(), None, None).await?;
    let engine = running.engine.as_ref().map_or("none", |e| e.kind());
    let store = if service_kit::db::is_postgres(&settings.database.url) { "postgres" } else { "sqlite" };
    for (kind, addr) in &running.addrs {
        tracing::info!(service = %kind, %addr, "listening");
    }
    if print_help {
        println!("Inventory Mesh is up (counters: {engine}, store: {store} {}):", redact(&settings.database.url));
        for (kind, addr) in &running.addrs {
            println!("  {kind:<14} grpc://{addr}");
        }
        if let Some(addr) = running.addrs.get(&ServiceKind::Availability) {
            let a = addr;
            println!("\nTry (grpcurl uses server reflection; no proto files needed):");
            println!("  grpcurl -plaintext {a} list");
            println!(
                "  grpcurl -plaintext -d '{{\"locations\":[{{\"locationId\":\"DC1\",\"type\":\"LOCATION_TYPE_DC\",\"position\":{{\"lat\":-23.55,\"lon\":-46.63}}}}]}}' {a} availability.v1.AvailabilityService/UpsertLocations"
            );
            println!(
                "  grpcurl -plaintext -d '{{\"events\":[{{\"eventId\":\"demo-receipt-1\",\"type\":\"EVENT_TYPE_RECEIPT\",\"cell\":{{\"sku\":\"SKU1\",\"locationId\":\"DC1\"}},\"quantityUnits\":\"10\",\"occurredAt\":\"2026-01-01T00:00:00Z\"}}]}}' {a} availability.v1.AvailabilityService/IngestEvents"
            );
            if let Some(r) = running.addrs.get(&ServiceKind::Reservation) {
                println!(
                    "  grpcurl -plaintext -d '{{\"reservationId\":\"demo-hold-1\",\"lines\":[{{\"sku\":\"SKU1\",\"locationId\":\"DC1\",\"quantityUnits\":\"3\"}}]}}' {r} reservation.v1.ReservationService/CreateReservation"
                );
            }
            println!(
                "  grpcurl -plaintext -d '{{\"cells\":[{{\"sku\":\"SKU1\",\"locationId\":\"DC1\"}}]}}' {a} availability.v1.AvailabilityService/GetCellAtp"
            );
            println!(
                "  grpcurl -plaintext -d '{{\"channels\":[{{\"channelId\":\"web\",\"locationIds\":[\"DC1\"]}}]}}' {a} availability.v1.AvailabilityService/UpsertChannels"
            );
            if let Some(s) = running.addrs.get(&ServiceKind::Sourcing) {
                println!(
                    "  grpcurl -plaintext -d '{{\"orderId\":\"demo-order-1\",\"channelId\":\"web\",\"lines\":[{{\"sku\":\"SKU1\",\"quantityUnits\":\"2\"}}],\"shipTo\":{{\"lat\":-22.9,\"lon\":-43.2}},\"allowSplit\":true}}' {s} sourcing.v1.SourcingService/SourceOrder"
                );
            }
            if let Some(r) = running.addrs.get(&ServiceKind::Replenishment) {
                println!("  grpcurl -plaintext -d '{{}}' {r} replenishment.v1.ReplenishmentService/RunReplenishment");
            }
            println!("  grpcurl -plaintext {a} grpc.health.v1.Health/Check");
            println!("\nCtrl-C stops it.");
        }
    }
    service_kit::shutdown::shutdown_signal().await;
    running.stop().await;
    db.close().await.ok();
    telemetry.shutdown();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn run_replay(
    settings: Settings,
    options: replay::ReplayOptions,
    report_path: &std::path::Path,
    standalone: bool,
) -> anyhow::Result<ExitCode> {
    let peers = &settings.peers;
    let running_mesh = if standalone { false } else { mesh_answers(&settings.peers.availability).await };
    let mut own = None;
    let targets = if running_mesh {
        eprintln!("replay: using the running mesh at {} (availability)", settings.peers.availability);
        replay::Targets {
            availability: replay_channel(&peers.availability)?,
            reservation: replay_channel(&peers.reservation)?,
            sourcing: replay_channel(&format!("http://{}", settings.sourcing.listen_addr))?,
            replenishment: replay_channel(&peers.replenishment)?,
        }
    } else {
        let mut settings = settings.clone();
        if !service_kit::db::is_postgres(&settings.database.url) {
            settings.database.url = format!("sqlite://target/replay/{}.sqlite?mode=rwc", options.run_id);
        }
        eprintln!(
            "replay: no mesh answering at {}; starting one in this process ({})",
            settings.peers.availability,
            redact(&settings.database.url)
        );
        let db = service_kit::db::connect(&settings.database).await.context("cannot open the database")?;
        mesh::migrate(&db).await.context("migration failed")?;
        let mut listeners = Vec::new();
        for kind in ServiceKind::ALL {
            listeners.push((kind, tokio::net::TcpListener::bind("127.0.0.1:0").await?));
        }
        let running = mesh::start(settings.clone(), listeners, db, None, None).await?;
        let channel = |kind: ServiceKind| replay_channel(&format!("http://{}", running.addrs[&kind]));
        let targets = replay::Targets {
            availability: channel(ServiceKind::Availability)?,
            reservation: channel(ServiceKind::Reservation)?,
            sourcing: channel(ServiceKind::Sourcing)?,
            replenishment: channel(ServiceKind::Replenishment)?,
        };
        own = Some(running);
        targets
    };
    let report = replay::replay(&options, &targets).await?;
    replay::write_report(&report, report_path)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!(
        "replay: {} orders in {:.1} s on {} + {}: {} fulfilled, {} backordered, {} rejected; {} units oversold; invariants {}; report written to {}",
        report.orders_total,
        report.elapsed_s,
        report.engine,
        report.store,
        report.orders_fulfilled,
        report.orders_backordered,
        report.orders_rejected,
        report.units_oversold,
        if report.invariants_ok { "ok" } else { "BROKEN" },
        report_path.display()
    );
    if let Some(running) = own {
        running.stop().await;
    }
    Ok(if report.invariants_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A channel for the replay: its end-of-run calls (replenishment over every cell, reconcile) may
/// take much longer than a service's peer-call timeout.
fn replay_channel(address: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(address.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(600))
        .tcp_nodelay(true)
        .connect_lazy())
}

async fn mesh_answers(address: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(address.to_owned()) else { return false };
    let Ok(Ok(channel)) =
        tokio::time::timeout(Duration::from_secs(1), endpoint.connect_timeout(Duration::from_millis(500)).connect())
            .await
    else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            health.check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        )
        .await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_names_the_availability_port_and_reservation_follows() {
        let settings = Settings::defaults();
        let pair = |t: &str| peers(&settings, Some(t)).map_err(|e| e.to_string());
        assert_eq!(pair("mesh.local"), Ok(("http://mesh.local:50051".into(), "http://mesh.local:50052".into())));
        assert_eq!(pair("127.0.0.1:7000"), Ok(("http://127.0.0.1:7000".into(), "http://127.0.0.1:7001".into())));
        assert_eq!(pair("http://h:9"), Ok(("http://h:9".into(), "http://h:10".into())));
        assert_eq!(pair("h:x"), Err("--target h:x: the port must be a number below 65535".into()));
        assert_eq!(pair(":1"), Err("--target :1: give HOST or HOST:PORT".into()));
        assert_eq!(pair("h:7000/"), Ok(("http://h:7000".into(), "http://h:7001".into())));
        assert_eq!(pair("[::1]"), Ok(("http://[::1]:50051".into(), "http://[::1]:50052".into())));
        assert_eq!(pair("[::1]:7000"), Ok(("http://[::1]:7000".into(), "http://[::1]:7001".into())));
        assert_eq!(
            pair("https://h"),
            Err("--target https://h: TLS is not spoken by these tools; give HOST[:PORT] of a plaintext port".into())
        );
        assert_eq!(
            peers(&settings, None).unwrap(),
            (settings.peers.availability.clone(), settings.peers.reservation.clone())
        );
    }
}
