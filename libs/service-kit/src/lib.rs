//! Shared kit of every Inventory Mesh service: layered configuration, telemetry, graceful
//! shutdown, the gRPC server (health, reflection v1 + v1alpha, tracing layer), outgoing call
//! context (trace context and shrinking deadlines), the one error → `Status` mapping, and
//! `/metrics`.
pub mod call;
pub mod config;
pub mod db;
pub mod error;
pub mod feed;
pub mod grpc;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod time;

pub use call::CallContext;
pub use error::{ErrorKind, ServiceError, invalid_argument, to_status};
