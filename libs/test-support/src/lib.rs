//! Dev-only helpers: start the whole mesh in-process on `127.0.0.1:0` against a chosen back end
//! (embedded: a temporary SQLite file and the in-process engine, optionally on a manual clock;
//! external: real Redis under a fresh key prefix and a fresh PostgreSQL database), plus clients
//! and small builders for requests. Nothing here mocks a component.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{sync::Arc, time::Duration};

use inventory_mesh::mesh::{self, RunningMesh, ServiceKind};
use mesh_counters::{CounterEngine, ManualClock, MemoryEngine, RedisEngine};
use mesh_proto::{
    availability::v1::{self as av, availability_service_client::AvailabilityServiceClient},
    common::v1::{CellQuantities, CellRef},
    replenishment::v1::replenishment_service_client::ReplenishmentServiceClient,
    reservation::v1::{self as rv, reservation_service_client::ReservationServiceClient},
    sourcing::v1::sourcing_service_client::SourcingServiceClient,
};
use service_kit::{config::Settings, grpc::CallRecorder};
use tonic::transport::Channel;

/// Which stores the mesh runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file + in-process counter engine.
    Embedded,
    /// Real Redis (fresh key prefix) + real PostgreSQL (fresh database).
    External,
    /// A real 3-master Redis Cluster on loopback (fresh key prefix) + real PostgreSQL.
    Cluster,
}

/// The URL of one node of the test Redis Cluster (MESH_TEST_CLUSTER_URL, else the loopback cluster
/// that `scripts/redis-cluster.sh` starts, started here on first use).
pub fn cluster_url() -> String {
    if let Ok(url) = std::env::var("MESH_TEST_CLUSTER_URL") {
        return url;
    }
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/redis-cluster.sh");
        let output = std::process::Command::new("bash").arg(script).arg("start").output().unwrap();
        assert!(
            output.status.success(),
            "could not start the test Redis Cluster ({script} start): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    });
    "redis://127.0.0.1:7101".into()
}

/// Connects a Redis Cluster engine under a fresh prefix.
pub async fn cluster_engine() -> RedisEngine {
    let url = cluster_url();
    match tokio::time::timeout(Duration::from_secs(10), RedisEngine::connect_cluster(&url, &key_prefix())).await {
        Ok(Ok(engine)) => engine,
        other => panic!("the Redis Cluster at {url} does not answer: {:?}", other.map(|r| r.err())),
    }
}

/// The Redis URL tests use (REDIS_URL, else the local default).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The PostgreSQL URL tests create databases from (DATABASE_URL, else the local default).
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh key prefix.
pub fn key_prefix() -> String {
    format!("t{}:", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Connects a Redis engine under a fresh prefix, failing with how to start Redis if it is down.
pub async fn redis_engine() -> RedisEngine {
    let url = redis_url();
    match tokio::time::timeout(Duration::from_secs(5), RedisEngine::connect(&url, &key_prefix())).await {
        Ok(Ok(engine)) => engine,
        _ => panic!(
            "Redis is needed at {url} and does not answer. Start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no (or set REDIS_URL)"
        ),
    }
}

/// Creates a fresh PostgreSQL database and returns its URL, failing with how to start PostgreSQL.
pub async fn fresh_postgres_database() -> String {
    use sea_orm::{ConnectionTrait, Database};
    let admin_url = postgres_url();
    let admin = match tokio::time::timeout(Duration::from_secs(5), Database::connect(&admin_url)).await {
        Ok(Ok(db)) => db,
        _ => panic!(
            "PostgreSQL is needed at {admin_url} and does not answer. Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start (or set DATABASE_URL)"
        ),
    };
    let name = format!("mesh_test_{}", uuid::Uuid::new_v4().simple());
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
    admin.close().await.ok();
    let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base).to_owned();
    format!("{base}/{name}")
}

/// A running mesh with clients.
pub struct TestMesh {
    pub backend: Backend,
    pub availability: AvailabilityServiceClient<Channel>,
    pub reservation: ReservationServiceClient<Channel>,
    pub sourcing: SourcingServiceClient<Channel>,
    pub replenishment: ReplenishmentServiceClient<Channel>,
    pub engine: CounterEngine,
    pub recorder: CallRecorder,
    pub settings: Settings,
    pub addrs: std::collections::BTreeMap<ServiceKind, std::net::SocketAddr>,
    running: Option<RunningMesh>,
    _dir: tempfile::TempDir,
}

/// A change to the settings, made before the mesh starts.
pub type Configure = Box<dyn FnOnce(&mut Settings) + Send>;

/// Options for starting a test mesh.
#[derive(Default)]
pub struct Options {
    /// Run the embedded engine on this clock (embedded back end only).
    pub clock: Option<Arc<ManualClock>>,
    /// Tweak settings before start.
    pub configure: Option<Configure>,
    /// External back end: use this Redis (e.g. a private process or a fault proxy) instead of
    /// REDIS_URL.
    pub redis_url: Option<String>,
}

impl TestMesh {
    /// Starts the mesh on `backend` with default options.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    /// Starts the mesh on `backend`.
    pub async fn start_with(backend: Backend, options: Options) -> Self {
        service_kit::telemetry::init_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::defaults();
        settings.shutdown.drain_delay = Duration::ZERO;
        settings.shutdown.grace = Duration::from_secs(5);
        settings.reservation.sweep_interval = Duration::from_millis(200);
        settings.replenishment.evaluation_interval = Duration::from_millis(300);
        let engine = match backend {
            Backend::Embedded => {
                settings.database.url = format!("sqlite://{}/mesh.sqlite?mode=rwc", dir.path().display());
                let clock: Arc<dyn mesh_counters::Clock> = match &options.clock {
                    Some(clock) => clock.clone(),
                    None => Arc::new(mesh_counters::SystemClock),
                };
                CounterEngine::Memory(Arc::new(MemoryEngine::new(clock)))
            }
            Backend::External => {
                settings.database.url = fresh_postgres_database().await;
                settings.redis.url = options.redis_url.clone().unwrap_or_else(redis_url);
                let engine = match &options.redis_url {
                    Some(url) => RedisEngine::connect(url, &key_prefix()).await.unwrap(),
                    None => redis_engine().await,
                };
                settings.redis.key_prefix = engine.key_prefix().to_owned();
                CounterEngine::Redis(engine)
            }
            Backend::Cluster => {
                settings.database.url = fresh_postgres_database().await;
                settings.redis.url = cluster_url();
                settings.redis.cluster = true;
                let engine = cluster_engine().await;
                settings.redis.key_prefix = engine.key_prefix().to_owned();
                CounterEngine::Redis(engine)
            }
        };
        if let Some(configure) = options.configure {
            configure(&mut settings);
        }
        let db = service_kit::db::connect(&settings.database).await.unwrap();
        mesh::migrate(&db).await.unwrap();
        let mut listeners = Vec::new();
        for kind in ServiceKind::ALL {
            listeners.push((kind, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()));
        }
        let recorder = CallRecorder::default();
        let running =
            mesh::start(settings.clone(), listeners, db, Some(engine.clone()), Some(recorder.clone())).await.unwrap();
        let channel = |kind: ServiceKind| {
            tonic::transport::Endpoint::from_shared(format!("http://{}", running.addrs[&kind])).unwrap().connect_lazy()
        };
        Self {
            backend,
            availability: AvailabilityServiceClient::new(channel(ServiceKind::Availability)),
            reservation: ReservationServiceClient::new(channel(ServiceKind::Reservation)),
            sourcing: SourcingServiceClient::new(channel(ServiceKind::Sourcing)),
            replenishment: ReplenishmentServiceClient::new(channel(ServiceKind::Replenishment)),
            engine,
            recorder,
            settings,
            addrs: running.addrs.clone(),
            running: Some(running),
            _dir: dir,
        }
    }

    /// GetReservation's answer.
    pub async fn get(&self, id: &str) -> Result<rv::Reservation, tonic::Status> {
        let request = rv::GetReservationRequest { reservation_id: id.into() };
        self.reservation.clone().get_reservation(request).await.map(|r| r.into_inner().reservation.unwrap())
    }

    /// The reservation as GetReservation returns it (panics when there is none).
    pub async fn record(&self, id: &str) -> rv::Reservation {
        self.get(id).await.unwrap()
    }

    /// `GET /metrics` on the reservation port, as Prometheus scrapes it.
    pub async fn metrics(&self) -> String {
        http_get(self.addrs[&ServiceKind::Reservation], "/metrics").await
    }

    /// Stops the mesh and drops its PostgreSQL database.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        if self.backend != Backend::Embedded {
            use sea_orm::{ConnectionTrait, Database};
            let name = self.settings.database.url.rsplit('/').next().unwrap_or_default().to_owned();
            if let Ok(admin) = Database::connect(&postgres_url()).await {
                let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                admin.close().await.ok();
            }
        }
    }

    /// Upserts a location at (lat, lon).
    pub async fn location(&self, id: &str, lat: f64, lon: f64, priority: i32) {
        self.availability
            .clone()
            .upsert_locations(av::UpsertLocationsRequest {
                locations: vec![av::Location {
                    location_id: id.into(),
                    r#type: av::LocationType::Dc as i32,
                    position: Some(mesh_proto::common::v1::GeoPoint { lat, lon }),
                    priority,
                }],
            })
            .await
            .unwrap();
    }

    /// Upserts a channel.
    pub async fn channel(&self, id: &str, locations: &[&str], buffer: i64) {
        self.availability
            .clone()
            .upsert_channels(av::UpsertChannelsRequest {
                channels: vec![av::Channel {
                    channel_id: id.into(),
                    location_ids: locations.iter().map(|l| (*l).to_owned()).collect(),
                    buffer_units: buffer,
                }],
            })
            .await
            .unwrap();
    }

    /// Ingests one event and returns its result.
    pub async fn event(&self, event: av::InventoryEvent) -> av::EventResult {
        self.availability
            .clone()
            .ingest_events(av::IngestEventsRequest { events: vec![event] })
            .await
            .unwrap()
            .into_inner()
            .results
            .remove(0)
    }

    /// Receives `units` of `sku` at `location` (a fresh event id).
    pub async fn receive(&self, sku: &str, location: &str, units: i64) -> av::EventResult {
        self.event(event(
            &format!("rcv-{}", uuid::Uuid::new_v4().simple()),
            av::EventType::Receipt,
            sku,
            location,
            units,
            1_000,
        ))
        .await
    }

    /// Reads one cell.
    pub async fn cell(&self, sku: &str, location: &str) -> CellQuantities {
        self.availability
            .clone()
            .get_cell_atp(av::GetCellAtpRequest { cells: vec![cell(sku, location)] })
            .await
            .unwrap()
            .into_inner()
            .cells
            .remove(0)
    }

    /// Reserves lines `(sku, location, units)` under `id`.
    pub async fn reserve(
        &self,
        id: &str,
        lines: &[(&str, &str, i64)],
        ttl_ms: u64,
    ) -> Result<rv::Reservation, tonic::Status> {
        self.reservation
            .clone()
            .create_reservation(rv::CreateReservationRequest {
                reservation_id: id.into(),
                order_id: String::new(),
                lines: lines
                    .iter()
                    .map(|(s, l, u)| rv::ReservationLine {
                        sku: (*s).into(),
                        location_id: (*l).into(),
                        quantity_units: *u,
                        ..Default::default()
                    })
                    .collect(),
                ttl_ms,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().reservation.unwrap())
    }

    /// Confirms a reservation.
    pub async fn confirm(&self, id: &str) -> Result<rv::ConfirmReservationResponse, tonic::Status> {
        self.reservation
            .clone()
            .confirm_reservation(rv::ConfirmReservationRequest { reservation_id: id.into(), occurred_at: None })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Releases a reservation.
    pub async fn release(&self, id: &str) -> Result<rv::ReleaseReservationResponse, tonic::Status> {
        self.reservation
            .clone()
            .release_reservation(rv::ReleaseReservationRequest {
                reservation_id: id.into(),
                reason: rv::ReleaseReason::Cancelled as i32,
                lines: Vec::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Runs both reconcile checks and panics with the differences if any.
    pub async fn assert_reconciled(&self) {
        let availability =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addrs[&ServiceKind::Availability]))
                .unwrap()
                .connect_lazy();
        let reservation =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addrs[&ServiceKind::Reservation]))
                .unwrap()
                .connect_lazy();
        let report = inventory_mesh::reconcile::reconcile(availability, reservation).await.unwrap();
        assert!(report.is_clean(), "reconcile differences: {:#?}", report.differences);
    }
}

/// A cell reference.
pub fn cell(sku: &str, location: &str) -> CellRef {
    CellRef { sku: sku.into(), location_id: location.into() }
}

/// Builds an inventory event occurring at `at_ms`.
pub fn event(id: &str, kind: av::EventType, sku: &str, location: &str, units: i64, at_ms: i64) -> av::InventoryEvent {
    av::InventoryEvent {
        event_id: id.into(),
        r#type: kind as i32,
        cell: Some(cell(sku, location)),
        quantity_units: units,
        occurred_at: Some(service_kit::time::to_timestamp(at_ms)),
        source_system: "test".into(),
        reservation_id: String::new(),
        restockable: true,
        reason: String::new(),
    }
}

/// Sends `request` (a whole HTTP/1.1 request, head and body) and returns the whole answer.
pub async fn http_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// One HTTP/1.1 GET; returns the body of a 200 answer (panics on anything else).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let answer = http_exchange(addr, request.as_bytes()).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    // A small body comes with Content-Length; a chunked one would start with its size.
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "GET {path}: {head}");
    body.to_owned()
}

/// The value of one sample (`name{labels}`) in a Prometheus text answer, if it is there.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Asserts INVALID_ARGUMENT whose message starts with `field: ` and whose `BadRequest` details
/// name exactly that field.
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    use tonic_types::StatusExt;
    let status = result.expect_err(&format!("{field} should be rejected"));
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
    assert!(status.message().starts_with(&format!("{field}: ")), "message {:?} should name {field}", status.message());
    let violations: Vec<String> = status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(violations, vec![field.to_owned()]);
}

/// The `ErrorInfo.reason` of a status.
pub fn reason(status: &tonic::Status) -> String {
    service_kit::error::error_reason(status)
}

/// (on_hand, held, committed, atp) of a cell.
pub fn parts(q: &CellQuantities) -> (i64, i64, i64, i64) {
    (q.on_hand_units, q.held_units, q.committed_units, q.atp_units)
}

/// Declares one async test per back end, each ending with the reconcile check:
/// `backend_tests!(name, |mesh: &TestMesh| async move { .. })` or `backend_tests!(name, some_async_fn)`.
#[macro_export]
macro_rules! backend_tests {
    ($name:ident, |$mesh:ident: &TestMesh| async move $body:block) => {
        mod $name {
            use super::*;

            async fn case($mesh: &$crate::TestMesh) $body

            $crate::backend_tests!(@tests case);
        }
    };
    ($name:ident, $case:path) => {
        mod $name {
            use super::*;

            $crate::backend_tests!(@tests $case);
        }
    };
    ($name:ident, cluster, |$mesh:ident: &TestMesh| async move $body:block) => {
        mod $name {
            use super::*;

            async fn case($mesh: &$crate::TestMesh) $body

            $crate::backend_tests!(@tests case);

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis_cluster_postgres() {
                let mesh = $crate::TestMesh::start($crate::Backend::Cluster).await;
                case(&mesh).await;
                mesh.assert_reconciled().await;
                mesh.stop().await;
            }
        }
    };
    (@tests $case:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn embedded() {
            let mesh = $crate::TestMesh::start($crate::Backend::Embedded).await;
            $case(&mesh).await;
            mesh.assert_reconciled().await;
            mesh.stop().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn redis_postgres() {
            let mesh = $crate::TestMesh::start($crate::Backend::External).await;
            $case(&mesh).await;
            mesh.assert_reconciled().await;
            mesh.stop().await;
        }
    };
}

/// A TCP proxy between the product and a store (Redis, PostgreSQL) that tests can cut and
/// restore, or point at another server (a failover): fault injection without mocks.
pub struct FaultProxy {
    pub addr: std::net::SocketAddr,
    state: Arc<std::sync::Mutex<ProxyState>>,
}

struct ProxyState {
    target: std::net::SocketAddr,
    up: bool,
    generation: u64,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(std::sync::Mutex::new(ProxyState { target, up: true, generation: 0 }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                let (target, up, generation) = {
                    let s = shared.lock().unwrap();
                    (s.target, s.up, s.generation)
                };
                if !up {
                    drop(inbound); // refused: the store is "down"
                    continue;
                }
                let watch = shared.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        loop {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            if watch.lock().unwrap().generation != generation {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = cut => {}
                    }
                });
            }
        });
        Self { addr, state }
    }

    /// Drops every open connection and refuses new ones (the store is unreachable); returns once
    /// the open connections are closed.
    pub async fn cut(&self) {
        {
            let mut s = self.state.lock().unwrap();
            s.up = false;
            s.generation += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap().up = true;
    }

    /// Drops every open connection and sends new ones to `target` (a failover); returns once the
    /// open connections are closed.
    pub async fn switch_to(&self, target: std::net::SocketAddr) {
        {
            let mut s = self.state.lock().unwrap();
            s.target = target;
            s.generation += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A private redis-server process on a free loopback port (killed on drop), for tests that break
/// or fail over their Redis without disturbing the shared one.
pub struct RedisProcess {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl RedisProcess {
    /// Starts redis-server with no persistence; extra args are passed through (e.g. replicaof).
    pub async fn start(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let process = Self { port, child, _dir: dir };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(process.addr()).await.is_ok() {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {port} did not start");
    }

    /// Its address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a command on it.
    pub async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut connection = client.get_multiplexed_async_connection_with_config(&config).await.unwrap();
        cmd.query_async(&mut connection).await.unwrap()
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `inventory-mesh run` as a child process (killed with SIGKILL on drop) on four consecutive free
/// loopback ports, availability first, as `make run` lays them out: for tests that kill and
/// restart the process or drive the binary's subcommands.
pub struct MeshProcess {
    /// The availability port; reservation, sourcing and replenishment follow.
    pub base_port: u16,
    binary: std::path::PathBuf,
    env: Vec<(String, String)>,
    child: Option<std::process::Child>,
}

impl MeshProcess {
    /// Starts `binary run` against `database` and `redis` and waits until every port answers.
    pub async fn start(binary: &str, database: &str, redis: &str) -> Self {
        Self::start_with_env(binary, database, redis, &[]).await
    }

    /// [`MeshProcess::start`] with extra environment variables (e.g. LD_PRELOAD of libfaketime).
    pub async fn start_with_env(binary: &str, database: &str, redis: &str, extra: &[(&str, &str)]) -> Self {
        let base_port = consecutive_free_ports(4);
        let mut env = vec![
            ("DATABASE_URL".to_owned(), database.to_owned()),
            ("REDIS_URL".to_owned(), redis.to_owned()),
            ("MESH__RESERVATION__STALE_CLAIM_AFTER".to_owned(), "1s".to_owned()),
            ("MESH__RESERVATION__SWEEP_INTERVAL".to_owned(), "200ms".to_owned()),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        for (i, kind) in ["AVAILABILITY", "RESERVATION", "SOURCING", "REPLENISHMENT"].iter().enumerate() {
            env.push((format!("MESH__{kind}__LISTEN_ADDR"), format!("127.0.0.1:{}", base_port + i as u16)));
        }
        let mut process = Self { base_port, binary: binary.into(), env, child: None };
        process.restart().await;
        process
    }

    /// (Re)starts the process on the same ports and stores.
    pub async fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new(&self.binary)
            .arg("run")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for port in self.base_port..self.base_port + 4 {
            self.channel(port).await;
        }
    }

    /// `kill -9` of the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connected channel to `port`, waiting up to 15 s for it to open.
    pub async fn channel(&self, port: u16) -> Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        for _ in 0..300 {
            if let Ok(channel) = endpoint.connect().await {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the mesh did not open port {port}");
    }

    /// A client of the availability service.
    pub async fn availability(&self) -> AvailabilityServiceClient<Channel> {
        AvailabilityServiceClient::new(self.channel(self.base_port).await)
    }

    /// Receives `units` of every SKU at `location` (one receipt event each).
    pub async fn receive(&self, skus: &[impl AsRef<str>], location: &str, units: i64) {
        let now = service_kit::time::now_ms();
        let events = skus
            .iter()
            .map(|sku| {
                event(&format!("r-{}", sku.as_ref()), av::EventType::Receipt, sku.as_ref(), location, units, now)
            })
            .collect();
        self.availability().await.ingest_events(av::IngestEventsRequest { events }).await.unwrap();
    }

    /// A client of the reservation service.
    pub async fn reservation(&self) -> ReservationServiceClient<Channel> {
        ReservationServiceClient::new(self.channel(self.base_port + 1).await)
    }
}

impl Drop for MeshProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first of `n` consecutive loopback ports that are free now.
pub fn consecutive_free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base > u16::MAX - n {
            continue;
        }
        if (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}
