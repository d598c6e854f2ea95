//! `ReplenishmentError` and its mapping to gRPC status.
use service_kit::{ErrorKind, ServiceError, to_status};
use tonic::Status;

/// Everything that can go wrong in the replenishment service.
#[derive(Debug, thiserror::Error)]
pub enum ReplenishmentError {
    #[error("peer {peer} failed: {message}")]
    Peer { peer: &'static str, kind: ErrorKind, message: String },
    #[error("relational store: {0}")]
    Database(#[from] sea_orm::DbErr),
}

/// Result of replenishment operations.
pub type ReplenishmentResult<T> = Result<T, ReplenishmentError>;

impl ServiceError for ReplenishmentError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Peer { kind, .. } => *kind,
            Self::Database(error) => service_kit::error::db_error_kind(error),
        }
    }
}

impl From<ReplenishmentError> for Status {
    fn from(error: ReplenishmentError) -> Self {
        to_status(&error)
    }
}
