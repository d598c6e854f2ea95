//! The reservation service: holds and commitments. Every unit is committed to exactly one buyer:
//! a multi-line reserve is one atomic counter step (Lua script or in-process critical section),
//! idempotent by reservation id, recorded durably before the reply.
//!
//! - [`domain`]: lines, body digest, status machine (no I/O).
//! - [`service`]: create / confirm / release / sweep over the store and the counters.
//! - [`store`]: reservations, lines and history (sea-orm); [`migration`]: its tables;
//!   [`group_commit`]: the reserve path's PostgreSQL writes, batched across concurrent requests.
//! - [`api`]: gRPC handlers and the reconcile check; [`demand`]: confirmed demand → replenishment;
//!   [`metrics`]: what the sweeper counts.
pub mod api;
pub mod demand;
pub mod domain;
pub mod error;
pub mod group_commit;
pub mod metrics;
pub mod migration;
pub mod service;
pub mod store;

use std::time::Duration;

use mesh_counters::CounterEngine;
use mesh_proto::reservation::v1::reservation_service_server::ReservationServiceServer;
use sea_orm::DatabaseConnection;
use service_kit::{config::Settings, grpc::ServiceRoutes};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;

/// The gRPC service name health reports on.
pub const SERVICE_NAME: &str = "reservation.v1.ReservationService";

/// Builds the service's routes and starts its sweeper (and the demand feed when a replenishment
/// peer is configured) on `tracker`, stopping on `shutdown`.
///
/// # Errors
/// The replenishment peer address is not a valid URI.
pub fn routes(
    settings: &Settings,
    db: DatabaseConnection,
    engine: CounterEngine,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<ServiceRoutes, tonic::transport::Error> {
    let demand = if settings.peers.replenishment.is_empty() {
        None
    } else {
        let channel = service_kit::grpc::peer_channel(&settings.peers.replenishment, &settings.peers)?;
        Some(demand::DemandSender::start(channel, settings.peers.call_timeout, tracker, shutdown.clone()))
    };
    let reservations = service::Reservations::new(store::ReservationStore::new(db), engine, demand)
        .with_max_hold_time(settings.reservation.max_hold_time)
        .with_stale_claim_after(settings.reservation.stale_claim_after);
    metrics::init();
    spawn_sweeper(reservations.clone(), settings.reservation.sweep_interval, tracker, shutdown);
    let api = api::ReservationApi::new(
        reservations,
        settings.reservation.default_hold_ttl.as_millis() as u64,
        settings.reservation.max_hold_ttl.as_millis() as u64,
    );
    Ok(ServiceRoutes { routes: Routes::new(ReservationServiceServer::new(api)), service_names: vec![SERVICE_NAME] })
}

/// Records expired holds durably every `interval`, or sooner when a recorded deadline comes first
/// (expiry itself is exact without it).
fn spawn_sweeper(
    reservations: service::Reservations,
    interval: Duration,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let started_ms = service_kit::time::now_ms();
    tracker.spawn(async move {
        match reservations.recover_after_restart(started_ms).await {
            Ok(0) => {}
            Ok(settled) => tracing::warn!(settled, "settled held reservations a crash left behind their counters"),
            Err(error) => tracing::warn!(%error, "recovery after restart failed; reconcile will show what is left"),
        }
        loop {
            let wait = match reservations.sweep().await {
                Ok(sweep) => {
                    if sweep.settled() > 0 {
                        tracing::debug!(?sweep, "sweeper settled reservations");
                    }
                    // Wake at the next deadline (5 ms after it) when it comes before the tick; one
                    // already past that this sweep left HELD waits for the tick.
                    let next = sweep
                        .next_deadline_in_ms
                        .filter(|ms| *ms > 0)
                        .map(|ms| Duration::from_millis(ms.unsigned_abs() + 5));
                    next.map_or(interval, |next| next.min(interval))
                }
                Err(error) => {
                    tracing::warn!(%error, "sweep failed; retrying next tick");
                    interval
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => break,
            }
        }
    });
}
