//! The replenishment service: sales velocity per cell from confirmed demand, LOW_STOCK /
//! STOCKOUT / OVERCOMMITTED alerts raised once per crossing, and reorder suggestions.
//!
//! - [`domain`]: alert levels and the reorder rule, no I/O.
//! - [`store`]: demand and alerts (sea-orm); [`migration`]: its tables.
//! - [`api`]: the handlers; cell counters are read from availability.
//!
//! Alerts are evaluated when demand arrives (after a confirm), when availability reports a cell at
//! or below zero ATP after a physical change, on RunReplenishment, and every
//! `replenishment.evaluation_interval` for every cell with demand or an open alert.
pub mod api;
pub mod domain;
pub mod error;
pub mod migration;
pub mod store;

use std::time::Duration;

use mesh_proto::replenishment::v1::replenishment_service_server::ReplenishmentServiceServer;
use sea_orm::DatabaseConnection;
use service_kit::{config::Settings, grpc::ServiceRoutes};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;

/// The gRPC service name health reports on.
pub const SERVICE_NAME: &str = "replenishment.v1.ReplenishmentService";

/// Builds the service's routes and starts its periodic evaluation on `tracker`.
///
/// # Errors
/// The availability peer address is not a valid URI.
pub fn routes(
    settings: &Settings,
    db: DatabaseConnection,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<ServiceRoutes, tonic::transport::Error> {
    let availability = service_kit::grpc::peer_channel(&settings.peers.availability, &settings.peers)?;
    let api = api::ReplenishmentApi::new(
        availability,
        store::ReplenishmentStore::new(db),
        settings.replenishment.clone(),
        settings.peers.call_timeout,
    );
    spawn_evaluation_loop(api.clone(), settings.replenishment.evaluation_interval, tracker, shutdown);
    Ok(ServiceRoutes { routes: Routes::new(ReplenishmentServiceServer::new(api)), service_names: vec![SERVICE_NAME] })
}

/// Re-evaluates every known cell every `interval`, so a crossing back up (a receipt, a release, an
/// expiry) closes its alert even when nobody asks.
fn spawn_evaluation_loop(
    api: api::ReplenishmentApi,
    interval: Duration,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    tracker.spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(error) = api.evaluate_known_cells(&service_kit::CallContext::background()).await {
                tracing::warn!(%error, "periodic alert evaluation failed; retrying next tick");
            }
        }
    });
}
