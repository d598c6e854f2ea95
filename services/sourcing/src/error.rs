//! `SourcingError` and its mapping to gRPC status.
use std::collections::HashMap;

use service_kit::{ErrorKind, ServiceError, error::failed_precondition, invalid_argument, to_status};
use tonic::Status;

/// Everything that can go wrong while sourcing.
#[derive(Debug, thiserror::Error)]
pub enum SourcingError {
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{reason}: {message}")]
    Refused { reason: &'static str, message: String, metadata: HashMap<String, String> },
    #[error("peer {peer} failed: {message}")]
    Peer { peer: &'static str, kind: ErrorKind, message: String },
    #[error("relational store: {0}")]
    Database(#[from] sea_orm::DbErr),
}

/// Result of sourcing operations.
pub type SourcingResult<T> = Result<T, SourcingError>;

impl SourcingError {
    /// Converts a peer's status at our client boundary (its message is not forwarded).
    pub fn peer(peer: &'static str, status: &Status) -> Self {
        Self::Peer { peer, kind: service_kit::error::peer_status_kind(status), message: format!("{:?}", status.code()) }
    }
}

impl ServiceError for SourcingError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Self::Refused { .. } => ErrorKind::FailedPrecondition,
            Self::Peer { kind, .. } => *kind,
            Self::Database(error) => service_kit::error::db_error_kind(error),
        }
    }
}

impl From<SourcingError> for Status {
    fn from(error: SourcingError) -> Self {
        match &error {
            SourcingError::InvalidArgument { field, description } => invalid_argument(field, description),
            SourcingError::Refused { reason, message, metadata } => {
                failed_precondition(reason, message, metadata.clone())
            }
            _ => to_status(&error),
        }
    }
}
