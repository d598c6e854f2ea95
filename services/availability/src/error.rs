//! `AvailabilityError` and its mapping to gRPC status.
use service_kit::{ErrorKind, ServiceError, invalid_argument, to_status};
use tonic::Status;

/// Everything that can go wrong in the availability service.
#[derive(Debug, thiserror::Error)]
pub enum AvailabilityError {
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("lost a race on {0}; retry")]
    Conflict(String),
    #[error("relational store: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Counters(#[from] mesh_counters::CounterError),
}

/// Result of availability operations.
pub type AvailabilityResult<T> = Result<T, AvailabilityError>;

impl AvailabilityError {
    /// Builds an INVALID_ARGUMENT error naming the field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }
}

impl ServiceError for AvailabilityError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Database(error) => service_kit::error::db_error_kind(error),
            Self::Counters(mesh_counters::CounterError::Unavailable(_) | mesh_counters::CounterError::Lost(_)) => {
                ErrorKind::Unavailable
            }
            Self::Counters(_) => ErrorKind::Internal,
        }
    }
}

impl From<AvailabilityError> for Status {
    fn from(error: AvailabilityError) -> Self {
        match &error {
            AvailabilityError::InvalidArgument { field, description } => invalid_argument(field, description),
            _ => to_status(&error),
        }
    }
}
