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
pub mod api;
pub mod domain;
pub mod error;
pub mod migration;
pub mod store;

use mesh_counters::CounterEngine;
use mesh_proto::availability::v1::availability_service_server::AvailabilityServiceServer;
use sea_orm::DatabaseConnection;
use service_kit::grpc::ServiceRoutes;
use tonic::service::Routes;

/// The gRPC service name health reports on.
pub const SERVICE_NAME: &str = "availability.v1.AvailabilityService";

/// Builds the service's routes.
pub fn routes(db: DatabaseConnection, engine: CounterEngine) -> ServiceRoutes {
    let api = api::AvailabilityApi::new(store::AvailabilityStore::new(db), engine);
    ServiceRoutes { routes: Routes::new(AvailabilityServiceServer::new(api)), service_names: vec![SERVICE_NAME] }
}
