//! The replenishment service: sales velocity per cell from confirmed demand, LOW_STOCK /
//! STOCKOUT / OVERCOMMITTED alerts raised once per crossing, and reorder suggestions.
//!
//! - [`domain`]: alert levels and the reorder rule, no I/O.
//! - [`store`]: demand and alerts (sea-orm); [`migration`]: its tables.
//! - [`api`]: the handlers; cell counters are read from availability.
pub mod api;
pub mod domain;
pub mod error;
pub mod migration;
pub mod store;

use mesh_proto::replenishment::v1::replenishment_service_server::ReplenishmentServiceServer;
use sea_orm::DatabaseConnection;
use service_kit::{config::Settings, grpc::ServiceRoutes};
use tonic::service::Routes;

/// The gRPC service name health reports on.
pub const SERVICE_NAME: &str = "replenishment.v1.ReplenishmentService";

/// Builds the service's routes.
///
/// # Errors
/// The availability peer address is not a valid URI.
pub fn routes(settings: &Settings, db: DatabaseConnection) -> Result<ServiceRoutes, tonic::transport::Error> {
    let availability = service_kit::grpc::peer_channel(&settings.peers.availability, &settings.peers)?;
    let api = api::ReplenishmentApi::new(
        availability,
        store::ReplenishmentStore::new(db),
        settings.replenishment.clone(),
        settings.peers.call_timeout,
    );
    Ok(ServiceRoutes { routes: Routes::new(ReplenishmentServiceServer::new(api)), service_names: vec![SERVICE_NAME] })
}
