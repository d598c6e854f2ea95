//! The product side: a mesh on Redis + PostgreSQL in its production configuration (its own process
//! in `make bench`, in-process for the smoke test), the data the cases need, and one operation per
//! case (Reserve hot / uniform / Zipf with 1, 3 or 10 lines, the ATP read, SourceOrder on a network
//! of hundreds of nodes, event ingestion), plus the RPC ceiling (a unary health check on a server
//! built exactly like the services').
use std::{sync::Arc, time::Duration};

use anyhow::Context;
use inventory_mesh::mesh::{self, ServiceKind};
use mesh_proto::{
    availability::v1::{
        Channel as SalesChannel, EventType, GetCellAtpRequest, IngestEventsRequest, InventoryEvent, Location,
        LocationType, UpsertChannelsRequest, UpsertLocationsRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::v1::{CellRef, GeoPoint},
    reservation::v1::{
        CreateReservationRequest, ReservationLine, reservation_service_client::ReservationServiceClient,
    },
    sourcing::v1::{OrderLine, SourceOrderRequest, sourcing_service_client::SourcingServiceClient},
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::loadgen::{Zipf, unit};

/// SKUs of the uniform and Zipf cases (each stocked at L1; the smoke test uses fewer).
pub const SKUS: usize = 10_000;
/// SKUs of the smoke test.
pub const SMOKE_SKUS: usize = 200;
/// Nodes of the sourcing network.
pub const NODES: usize = 300;
/// SKUs of the sourcing network (each stocked at 20 nodes).
pub const NETWORK_SKUS: usize = 2_000;

/// Channels to a running mesh, and the server processes to measure.
#[derive(Clone)]
pub struct Mesh {
    pub availability: Channel,
    pub reservation: Channel,
    pub sourcing: Channel,
    /// Pids of the mesh process(es) (empty when it runs inside the bench process).
    pub pids: Vec<u32>,
    pub run_id: String,
    /// How many uniform/Zipf SKUs are stocked.
    pub skus: usize,
    /// Nodes and SKUs of the sourcing network.
    pub nodes: usize,
    pub network_skus: usize,
}

fn channel(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect_lazy())
}

/// Free loopback ports.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("bound").port())
}

/// Waits until a port accepts connections.
pub async fn wait_for(port: u16) -> anyhow::Result<()> {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("nothing listens on port {port}")
}

/// Starts `inventory-mesh run` (the release binary) on Redis + PostgreSQL.
pub async fn spawn_mesh(
    binary: &str,
    database_url: &str,
    redis_url: &str,
    prefix: &str,
) -> anyhow::Result<(Mesh, std::process::Child)> {
    let ports = free_ports::<4>();
    let child = std::process::Command::new(binary)
        .arg("run")
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("REDIS_KEY_PREFIX", prefix)
        .env("MESH__AVAILABILITY__LISTEN_ADDR", format!("127.0.0.1:{}", ports[0]))
        .env("MESH__RESERVATION__LISTEN_ADDR", format!("127.0.0.1:{}", ports[1]))
        .env("MESH__SOURCING__LISTEN_ADDR", format!("127.0.0.1:{}", ports[2]))
        .env("MESH__REPLENISHMENT__LISTEN_ADDR", format!("127.0.0.1:{}", ports[3]))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {binary} (build it with cargo build --release -p inventory-mesh)"))?;
    for port in ports {
        wait_for(port).await?;
    }
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let mesh = Mesh {
        availability: channel(addr(ports[0]))?,
        reservation: channel(addr(ports[1]))?,
        sourcing: channel(addr(ports[2]))?,
        pids: vec![child.id()],
        run_id: prefix.trim_end_matches(':').to_owned(),
        skus: SKUS,
        nodes: NODES,
        network_skus: NETWORK_SKUS,
    };
    Ok((mesh, child))
}

/// Starts the mesh inside this process (smoke test).
pub async fn start_in_process(
    database_url: &str,
    redis_url: &str,
    prefix: &str,
) -> anyhow::Result<(Mesh, mesh::RunningMesh)> {
    let mut settings = service_kit::config::Settings::defaults();
    settings.database.url = database_url.into();
    settings.redis.url = redis_url.into();
    settings.redis.key_prefix = prefix.into();
    let db = service_kit::db::connect(&settings.database).await?;
    mesh::migrate(&db).await?;
    let mut listeners = Vec::new();
    for kind in ServiceKind::ALL {
        listeners.push((kind, tokio::net::TcpListener::bind("127.0.0.1:0").await?));
    }
    let running = mesh::start(settings, listeners, db, None, None).await?;
    let mesh = Mesh {
        availability: channel(running.addrs[&ServiceKind::Availability])?,
        reservation: channel(running.addrs[&ServiceKind::Reservation])?,
        sourcing: channel(running.addrs[&ServiceKind::Sourcing])?,
        pids: Vec::new(),
        run_id: prefix.trim_end_matches(':').to_owned(),
        skus: SMOKE_SKUS,
        nodes: 20,
        network_skus: 50,
    };
    Ok((mesh, running))
}

/// Creates a fresh PostgreSQL database and returns its URL.
pub async fn fresh_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    use sea_orm::{ConnectionTrait, Database};
    let admin = Database::connect(admin_url).await.with_context(|| format!("PostgreSQL at {admin_url}"))?;
    admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await?;
    admin.close().await.ok();
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

fn receipt(id: String, sku: String, location: &str, units: i64) -> InventoryEvent {
    InventoryEvent {
        event_id: id,
        r#type: EventType::Receipt as i32,
        cell: Some(CellRef { sku, location_id: location.into() }),
        quantity_units: units,
        occurred_at: Some(service_kit::time::to_timestamp(service_kit::time::now_ms())),
        source_system: "bench".into(),
        ..InventoryEvent::default()
    }
}

/// Stocks the hot SKU, the uniform/Zipf SKUs and the sourcing network.
pub async fn stock(mesh: &Mesh) -> anyhow::Result<()> {
    let mut availability = AvailabilityServiceClient::new(mesh.availability.clone());
    let run = &mesh.run_id;
    let mut events = vec![receipt(format!("{run}-hot"), "HOT".into(), "L1", 1_000_000_000)];
    events.extend((0..mesh.skus).map(|i| receipt(format!("{run}-u{i}"), format!("U{i}"), "L1", 1_000_000)));
    for chunk in events.chunks(500) {
        availability.ingest_events(IngestEventsRequest { events: chunk.to_vec() }).await?;
    }
    {
        let (nodes, network_skus) = (mesh.nodes, mesh.network_skus);
        let locations = (0..nodes)
            .map(|n| Location {
                location_id: format!("N{n}"),
                r#type: LocationType::Dc as i32,
                position: Some(GeoPoint { lat: -30.0 + (n % 20) as f64, lon: -60.0 + (n / 20) as f64 }),
                priority: 0,
            })
            .collect();
        availability.upsert_locations(UpsertLocationsRequest { locations }).await?;
        let channel = SalesChannel {
            channel_id: "bench".into(),
            location_ids: (0..nodes).map(|n| format!("N{n}")).collect(),
            buffer_units: 0,
        };
        availability.upsert_channels(UpsertChannelsRequest { channels: vec![channel] }).await?;
        let mut events = Vec::new();
        for s in 0..network_skus {
            for k in 0..20.min(nodes) {
                let node = (s * 7 + k * 13) % nodes;
                events.push(receipt(format!("{run}-n{s}-{k}"), format!("P{s}"), &format!("N{node}"), 1_000_000));
            }
        }
        for chunk in events.chunks(500) {
            availability.ingest_events(IngestEventsRequest { events: chunk.to_vec() }).await?;
        }
    }
    Ok(())
}

/// How a Reserve case picks its SKUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Hot,
    Uniform,
    Zipf,
}

/// One Reserve: `lines` lines of 1 unit, each on a SKU picked by `pick`.
pub fn reserve_op(
    mesh: &Mesh,
    case: &str,
    pick: Pick,
    lines: usize,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Clone + Send + Sync + 'static {
    let client = ReservationServiceClient::new(mesh.reservation.clone());
    let skus = mesh.skus;
    let zipf = Arc::new(Zipf::new(skus, 1.1));
    let prefix = format!("{}-{case}-{}", mesh.run_id, uuid::Uuid::new_v4().simple());
    move |seq: u64| {
        let mut client = client.clone();
        let lines: Vec<ReservationLine> = (0..lines as u64)
            .map(|l| {
                let u = unit(seq.wrapping_mul(31).wrapping_add(l));
                let sku = match pick {
                    Pick::Hot => "HOT".to_owned(),
                    Pick::Uniform => format!("U{}", (u * skus as f64) as usize),
                    Pick::Zipf => format!("U{}", zipf.sample(u)),
                };
                ReservationLine { sku, location_id: "L1".into(), quantity_units: 1, ..Default::default() }
            })
            .collect();
        let request = CreateReservationRequest {
            reservation_id: format!("{prefix}-{seq}"),
            lines,
            ttl_ms: 600_000,
            ..Default::default()
        };
        Box::pin(async move { client.create_reservation(request).await.is_ok() })
    }
}

/// One ATP read of a uniform SKU.
pub fn atp_op(
    mesh: &Mesh,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Clone + Send + Sync + 'static {
    let client = AvailabilityServiceClient::new(mesh.availability.clone());
    let skus = mesh.skus;
    move |seq: u64| {
        let mut client = client.clone();
        let sku = format!("U{}", (unit(seq) * skus as f64) as usize);
        let request = GetCellAtpRequest { cells: vec![CellRef { sku, location_id: "L1".into() }] };
        Box::pin(async move { client.get_cell_atp(request).await.is_ok() })
    }
}

/// One SourceOrder of 3 lines on the network (it plans and reserves).
pub fn source_op(
    mesh: &Mesh,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Clone + Send + Sync + 'static {
    let client = SourcingServiceClient::new(mesh.sourcing.clone());
    let prefix = format!("{}-so-{}", mesh.run_id, uuid::Uuid::new_v4().simple());
    let network_skus = mesh.network_skus;
    move |seq: u64| {
        let mut client = client.clone();
        let lines = (0..3u64)
            .map(|l| OrderLine {
                sku: format!("P{}", (unit(seq * 3 + l) * network_skus as f64) as usize),
                quantity_units: 1,
            })
            .collect();
        let request = SourceOrderRequest {
            order_id: format!("{prefix}-{seq}"),
            lines,
            ship_to: Some(GeoPoint { lat: -20.0 + (seq % 10) as f64, lon: -50.0 }),
            channel_id: "bench".into(),
            allow_split: true,
            allow_backorder: true,
            hold_ttl_ms: 600_000,
            ..Default::default()
        };
        Box::pin(async move { client.source_order(request).await.is_ok() })
    }
}

/// One IngestEvents call of 100 receipts (events/s = 100 × calls/s).
pub fn ingest_op(
    mesh: &Mesh,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Clone + Send + Sync + 'static {
    let client = AvailabilityServiceClient::new(mesh.availability.clone());
    let prefix = format!("{}-in-{}", mesh.run_id, uuid::Uuid::new_v4().simple());
    let skus = mesh.skus;
    move |seq: u64| {
        let mut client = client.clone();
        let events = (0..100u64)
            .map(|k| {
                receipt(
                    format!("{prefix}-{seq}-{k}"),
                    format!("U{}", (unit(seq * 100 + k) * skus as f64) as usize),
                    "L1",
                    1,
                )
            })
            .collect();
        Box::pin(async move { client.ingest_events(IngestEventsRequest { events }).await.is_ok() })
    }
}

/// One unary health check against the ceiling server.
pub fn ceiling_op(
    channel: Channel,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Clone + Send + Sync + 'static {
    let client = HealthClient::new(channel);
    move |_seq: u64| {
        let mut client = client.clone();
        Box::pin(async move { client.check(HealthCheckRequest { service: String::new() }).await.is_ok() })
    }
}

/// Serves only health (and reflection) with the services' server settings, until the process ends.
pub async fn serve_ceiling(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let settings = service_kit::config::Settings::defaults();
    let routes = service_kit::grpc::ServiceRoutes { routes: tonic::service::Routes::default(), service_names: vec![] };
    service_kit::grpc::serve(
        listener,
        routes,
        &settings.grpc,
        &settings.shutdown,
        tokio_util::sync::CancellationToken::new(),
        None,
    )
    .await?;
    Ok(())
}

/// Channel to a server on a port.
pub fn channel_to(port: u16) -> anyhow::Result<Channel> {
    channel(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}
