//! The availability service: owns locations, items, channels, the inventory event ledger and the
//! physical quantities (on_hand, safety), and answers ATP per cell, location set and channel.
//!
//! - [`domain`]: events and their effect on a position (COUNT as-of rules), no I/O.
//! - [`store`]: the durable ledger and positions (sea-orm); [`migration`]: its tables.
//! - [`api`]: the gRPC handlers; live counters go through `mesh_counters`.
//!
//! Invariant kept here: the durable position is written before the live counter, and the counter
//! is set to the position's absolute value under its version, so redelivery and reordering never
//! double-apply (invariants 4 and 7).
pub mod alert_feed;
pub mod api;
pub mod domain;
pub mod error;
pub mod migration;
pub mod store;

use mesh_counters::CounterEngine;
use mesh_proto::availability::v1::availability_service_server::AvailabilityServiceServer;
use sea_orm::DatabaseConnection;
use service_kit::{config::Settings, grpc::ServiceRoutes};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;

/// The gRPC service name health reports on.
pub const SERVICE_NAME: &str = "availability.v1.AvailabilityService";

/// Builds the service's routes (and, when a replenishment peer is configured, the alert feed).
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
    let feed = if settings.peers.replenishment.is_empty() {
        None
    } else {
        let channel = service_kit::grpc::peer_channel(&settings.peers.replenishment, &settings.peers)?;
        Some(alert_feed::AlertFeed::start(channel, settings.peers.call_timeout, tracker, shutdown))
    };
    let api = api::AvailabilityApi::new(store::AvailabilityStore::new(db), engine, feed);
    Ok(ServiceRoutes { routes: Routes::new(AvailabilityServiceServer::new(api)), service_names: vec![SERVICE_NAME] })
}
