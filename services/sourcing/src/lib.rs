//! The sourcing service: decides which node ships each order and reserves the plan.
//!
//! - [`domain`]: the planner (fewest nodes, ties by distance; backorder; explanations), no I/O.
//! - [`api`]: the handlers: availability read → plan → reservation, re-planning on a lost race.
//! - [`store`]: recorded decisions; [`migration`]: its table.
pub mod api;
pub mod domain;
pub mod error;
pub mod migration;
pub mod store;

use mesh_proto::sourcing::v1::sourcing_service_server::SourcingServiceServer;
use sea_orm::DatabaseConnection;
use service_kit::{config::Settings, grpc::ServiceRoutes};
use tonic::service::Routes;

/// The gRPC service name health reports on.
pub const SERVICE_NAME: &str = "sourcing.v1.SourcingService";

/// Builds the service's routes.
///
/// # Errors
/// A peer address is not a valid URI.
pub fn routes(settings: &Settings, db: DatabaseConnection) -> Result<ServiceRoutes, tonic::transport::Error> {
    let availability = service_kit::grpc::peer_channel(&settings.peers.availability, &settings.peers)?;
    let reservation = service_kit::grpc::peer_channel(&settings.peers.reservation, &settings.peers)?;
    let api = api::SourcingApi::new(
        availability,
        reservation,
        store::SourcingStore::new(db),
        settings.peers.call_timeout,
        settings.sourcing.max_split_nodes,
        settings.sourcing.max_attempts,
    );
    Ok(ServiceRoutes { routes: Routes::new(SourcingServiceServer::new(api)), service_names: vec![SERVICE_NAME] })
}
