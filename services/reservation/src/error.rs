//! `ReservationError` and its mapping to gRPC status. Business refusals are FAILED_PRECONDITION with
//! a reason code in `ErrorInfo` (INSUFFICIENT_STOCK, HOLD_EXPIRED, ALREADY_RELEASED, …).
use std::collections::HashMap;

use mesh_counters::Shortage;
use service_kit::{ErrorKind, ServiceError, error::failed_precondition, invalid_argument, to_status};
use tonic::Status;

/// Everything that can go wrong in the reservation service.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    #[error("reservation {0} not found")]
    NotFound(String),
    #[error("reservation {0} already exists with a different body")]
    AlreadyExists(String),
    #[error("{}", describe_shortages(.0, NAMED_SHORTAGES))]
    InsufficientStock(Vec<Shortage>),
    #[error("{reason}: {message}")]
    Refused { reason: &'static str, message: String },
    #[error("reservation {0} is being created by a concurrent request; retry")]
    InProgress(String),
    #[error("relational store: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Counters(#[from] mesh_counters::CounterError),
}

/// Result of reservation operations.
pub type ReservationResult<T> = Result<T, ReservationError>;

/// Short lines a refusal names in its message; ErrorInfo metadata carries up to
/// [`DETAILED_SHORTAGES`]. Both stay far below gRPC clients' 8 KiB header limit at 100 lines.
pub const NAMED_SHORTAGES: usize = 5;
/// Short lines a refusal lists in its ErrorInfo metadata (`short_lines` gives the count).
pub const DETAILED_SHORTAGES: usize = 20;

/// Describes at most `limit` shortages as `A@L1 requested 6, available 5`, then how many more.
pub fn describe_shortages(shortages: &[Shortage], limit: usize) -> String {
    let parts: Vec<String> = shortages
        .iter()
        .take(limit)
        .map(|s| {
            format!("{}@{} requested {}, available {}", s.cell.sku, s.cell.location, s.requested, s.available.max(0))
        })
        .collect();
    let more = shortages.len().saturating_sub(limit);
    let more = if more > 0 { format!("; and {more} more short line(s)") } else { String::new() };
    format!("INSUFFICIENT_STOCK: {}{more}", parts.join("; "))
}

impl ReservationError {
    /// Builds an INVALID_ARGUMENT error naming the field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }

    /// Builds a refusal with a reason code.
    pub fn refused(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Refused { reason, message: message.into() }
    }
}

impl ServiceError for ReservationError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Self::InsufficientStock(_) | Self::Refused { .. } => ErrorKind::FailedPrecondition,
            Self::InProgress(_) => ErrorKind::Conflict,
            Self::Database(error) => service_kit::error::db_error_kind(error),
            Self::Counters(mesh_counters::CounterError::Unavailable(_) | mesh_counters::CounterError::Lost(_)) => {
                ErrorKind::Unavailable
            }
            Self::Counters(_) => ErrorKind::Internal,
        }
    }
}

impl From<ReservationError> for Status {
    fn from(error: ReservationError) -> Self {
        match &error {
            ReservationError::InvalidArgument { field, description } => invalid_argument(field, description),
            ReservationError::InsufficientStock(shortages) => {
                let mut metadata: HashMap<String, String> = shortages
                    .iter()
                    .take(DETAILED_SHORTAGES)
                    .map(|s| {
                        (
                            format!("{}@{}", s.cell.sku, s.cell.location),
                            format!("requested={},available={}", s.requested, s.available.max(0)),
                        )
                    })
                    .collect();
                metadata.insert("short_lines".into(), shortages.len().to_string());
                let message = error.to_string();
                failed_precondition("INSUFFICIENT_STOCK", message.trim_start_matches("INSUFFICIENT_STOCK: "), metadata)
            }
            ReservationError::Refused { reason, message } => failed_precondition(reason, message, HashMap::new()),
            _ => to_status(&error),
        }
    }
}
