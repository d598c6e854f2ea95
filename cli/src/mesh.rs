//! Starting services: the counter engine (Redis when configured, else the in-process engine,
//! rebuilt from the durable records at startup), migrations, and one gRPC server per service on
//! its listener. When several services run in one process their peer addresses point at each
//! other's bound ports, so port 0 works in tests.
use std::{collections::BTreeMap, fmt, net::SocketAddr, str::FromStr, sync::Arc};

use anyhow::Context as _;
use mesh_counters::{CounterEngine, MemoryEngine, RedisEngine, SystemClock};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use service_kit::{
    config::Settings,
    grpc::{CallRecorder, ServiceRoutes},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// One of the four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKind {
    Availability,
    Reservation,
    Sourcing,
    Replenishment,
}

impl ServiceKind {
    /// All four, in port order.
    pub const ALL: [ServiceKind; 4] = [Self::Availability, Self::Reservation, Self::Sourcing, Self::Replenishment];

    /// The service's configured listen address.
    pub fn listen_addr(self, settings: &Settings) -> SocketAddr {
        match self {
            Self::Availability => settings.availability.listen_addr,
            Self::Reservation => settings.reservation.listen_addr,
            Self::Sourcing => settings.sourcing.listen_addr,
            Self::Replenishment => settings.replenishment.listen_addr,
        }
    }

    /// Tells whether the service touches the live counters.
    pub fn needs_counters(self) -> bool {
        matches!(self, Self::Availability | Self::Reservation)
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Availability => "availability",
            Self::Reservation => "reservation",
            Self::Sourcing => "sourcing",
            Self::Replenishment => "replenishment",
        })
    }
}

impl FromStr for ServiceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.to_string() == s).ok_or_else(|| {
            format!("unknown service {s:?}; expected availability, reservation, sourcing or replenishment")
        })
    }
}

/// Runs every service's migrations.
///
/// # Errors
/// A migration failed.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    availability::migration::Migrator::up(db, None).await?;
    reservation::migration::Migrator::up(db, None).await?;
    sourcing::migration::Migrator::up(db, None).await?;
    replenishment::migration::Migrator::up(db, None).await
}

/// Connects the counter engine the settings name.
///
/// # Errors
/// Redis is configured but unreachable.
pub async fn connect_engine(settings: &Settings) -> anyhow::Result<CounterEngine> {
    if settings.is_embedded_engine() {
        return Ok(CounterEngine::Memory(Arc::new(MemoryEngine::new(Arc::new(SystemClock)))));
    }
    let engine = if settings.redis.cluster {
        RedisEngine::connect_cluster(&settings.redis.url, &settings.redis.key_prefix)
            .await
            .with_context(|| format!("cannot connect to the Redis Cluster at {}", settings.redis.url))?
    } else {
        RedisEngine::connect(&settings.redis.url, &settings.redis.key_prefix)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", settings.redis.url))?
    };
    Ok(CounterEngine::Redis(engine))
}

/// A running set of services.
pub struct RunningMesh {
    /// Where each service listens.
    pub addrs: BTreeMap<ServiceKind, SocketAddr>,
    /// The counter engine the services share.
    pub engine: Option<CounterEngine>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    grace: std::time::Duration,
}

impl RunningMesh {
    /// Stops every service: NOT_SERVING, drain delay, drain in-flight calls and background tasks
    /// within the grace period.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait()).await.is_err() {
            tracing::warn!("shutdown grace period ran out with tasks still running");
        }
    }

    /// The token whose cancellation stops the mesh.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Refuses a set of services that would each need the one in-process counter engine from another
/// process (availability or reservation alone on the embedded default).
///
/// # Errors
/// The services need shared counters and the embedded engine cannot be shared.
pub fn check_counters_shared(settings: &Settings, kinds: &[ServiceKind]) -> anyhow::Result<()> {
    if settings.is_embedded_engine()
        && kinds.iter().any(|k| k.needs_counters())
        && !(kinds.contains(&ServiceKind::Availability) && kinds.contains(&ServiceKind::Reservation))
    {
        anyhow::bail!(
            "the embedded counter engine lives in one process: run availability and reservation together (`inventory-mesh run`) or set REDIS_URL"
        );
    }
    Ok(())
}

/// Starts `services` on the given listeners (bind them first: port 0 is fine).
///
/// # Errors
/// A peer address is invalid, Redis is unreachable, or the embedded engine is asked for while the
/// counter services do not all run in this process.
pub async fn start(
    mut settings: Settings,
    listeners: Vec<(ServiceKind, TcpListener)>,
    db: DatabaseConnection,
    engine: Option<CounterEngine>,
    recorder: Option<CallRecorder>,
) -> anyhow::Result<RunningMesh> {
    let kinds: Vec<ServiceKind> = listeners.iter().map(|(k, _)| *k).collect();
    let mut addrs = BTreeMap::new();
    for (kind, listener) in &listeners {
        addrs.insert(*kind, listener.local_addr()?);
    }
    for (kind, addr) in &addrs {
        let url = format!("http://{addr}");
        match kind {
            ServiceKind::Availability => settings.peers.availability = url,
            ServiceKind::Reservation => settings.peers.reservation = url,
            ServiceKind::Replenishment => settings.peers.replenishment = url,
            ServiceKind::Sourcing => {}
        }
    }
    let needs_counters = kinds.iter().any(|k| k.needs_counters());
    check_counters_shared(&settings, &kinds)?;
    let engine = match engine {
        Some(engine) => Some(engine),
        None if needs_counters => {
            let engine = connect_engine(&settings).await?;
            if let CounterEngine::Memory(_) = &engine {
                // The in-process engine starts empty: rebuild it from the durable records.
                let report = crate::rebuild::rebuild(&engine, &db, "startup").await?;
                if report.skus > 0 {
                    tracing::info!(?report, "embedded counters rebuilt from the durable store");
                }
            }
            Some(engine)
        }
        None => None,
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    if let Some(engine @ CounterEngine::Redis(_)) = &engine {
        // An empty, flushed or foreign Redis is rebuilt before any port opens, and watched after.
        crate::rebuild::ensure(engine, &db, false).await.context("checking the counters' origin")?;
        crate::rebuild::spawn_watchdog(
            engine.clone(),
            db.clone(),
            settings.redis.origin_check_interval,
            &tracker,
            shutdown.clone(),
        );
    }
    for (kind, listener) in listeners {
        let routes: ServiceRoutes = match kind {
            ServiceKind::Availability => availability::routes(
                &settings,
                db.clone(),
                engine.clone().context("engine")?,
                &tracker,
                shutdown.clone(),
            )?,
            ServiceKind::Reservation => reservation::routes(
                &settings,
                db.clone(),
                engine.clone().context("engine")?,
                &tracker,
                shutdown.clone(),
            )?,
            ServiceKind::Sourcing => sourcing::routes(&settings, db.clone())?,
            ServiceKind::Replenishment => replenishment::routes(&settings, db.clone(), &tracker, shutdown.clone())?,
        };
        let (grpc, shutdown_settings, token, recorder) =
            (settings.grpc.clone(), settings.shutdown.clone(), shutdown.clone(), recorder.clone());
        tracker.spawn(async move {
            if let Err(error) =
                service_kit::grpc::serve(listener, routes, &grpc, &shutdown_settings, token, recorder).await
            {
                tracing::error!(service = %kind, %error, "server stopped with an error");
            }
        });
    }
    Ok(RunningMesh { addrs, engine, shutdown, tracker, grace: settings.shutdown.grace + settings.shutdown.drain_delay })
}
