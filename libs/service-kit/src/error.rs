//! Error kinds and their one mapping to gRPC `Status`. Internal errors are logged with their source
//! chain and reach the caller only as "internal error".
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// What a caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Conflict,
    Unavailable,
    Timeout,
    Internal,
}

/// An error a service returns to callers.
pub trait ServiceError: std::error::Error {
    /// Classifies the error.
    fn kind(&self) -> ErrorKind;
}

/// Maps a service error to a gRPC status.
pub fn to_status(error: &(impl ServiceError + ?Sized)) -> Status {
    let code = match error.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Internal => {
            tracing::error!(error = ?error, "internal error");
            return Status::internal("internal error");
        }
    };
    Status::new(code, error.to_string())
}

/// Builds INVALID_ARGUMENT naming the field, with a `BadRequest` field violation in the details.
pub fn invalid_argument(field: &str, description: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, description);
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {description}"), details)
}

/// Checks an id: 1–128 characters of `[A-Za-z0-9._:/-]` (no `|` or braces, which the counter keys use).
pub fn validate_id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid_argument(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(invalid_argument(field, "must be at most 128 characters"));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')) {
        return Err(invalid_argument(field, "may hold only letters, digits and . _ : / -"));
    }
    Ok(())
}

/// Converts a peer's status at our client boundary; its message is not forwarded.
pub fn peer_status_kind(status: &Status) -> ErrorKind {
    match status.code() {
        Code::Unavailable => ErrorKind::Unavailable,
        Code::DeadlineExceeded | Code::Cancelled => ErrorKind::Timeout,
        _ => ErrorKind::Internal,
    }
}

/// Classifies a relational store error: an unreachable store is UNAVAILABLE, the rest internal.
pub fn db_error_kind(error: &sea_orm::DbErr) -> ErrorKind {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};
    match error {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => ErrorKind::Unavailable,
        // The connection broke mid-statement (the database went away): the statement's transaction
        // did not commit, so a retry is safe.
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))
            if matches!(
                **e,
                Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed | Sqlx::Tls(_)
            ) =>
        {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Internal,
    }
}

/// Builds FAILED_PRECONDITION carrying a machine-readable reason (`ErrorInfo.reason`, e.g.
/// `INSUFFICIENT_STOCK`, `HOLD_EXPIRED`) and metadata.
pub fn failed_precondition(reason: &str, message: &str, metadata: std::collections::HashMap<String, String>) -> Status {
    let details = ErrorDetails::with_error_info(reason, "inventory-mesh", metadata);
    Status::with_error_details(Code::FailedPrecondition, format!("{reason}: {message}"), details)
}

/// Reads the `ErrorInfo.reason` of a status (empty when it has none).
pub fn error_reason(status: &Status) -> String {
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

/// Converts a protobuf timestamp to Unix milliseconds, refusing values outside the Timestamp
/// range (0001-01-01 … 9999-12-31) or with invalid nanos as INVALID_ARGUMENT naming the field.
pub fn timestamp_ms(field: &str, timestamp: &prost_types::Timestamp) -> Result<i64, Status> {
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&timestamp.seconds) || !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(invalid_argument(field, "must be a valid timestamp between 0001-01-01 and 9999-12-31"));
    }
    Ok(timestamp.seconds * 1000 + i64::from(timestamp.nanos / 1_000_000))
}

/// How far in the future a business time may lie (clock skew between systems).
pub const MAX_FUTURE_MS: i64 = 24 * 3_600_000;

/// Like [`timestamp_ms`], and also refuses times more than a day in the future (a far-future time
/// would freeze COUNT rules and the velocity clock).
pub fn past_timestamp_ms(field: &str, timestamp: &prost_types::Timestamp) -> Result<i64, Status> {
    let ms = timestamp_ms(field, timestamp)?;
    if ms > crate::time::now_ms() + MAX_FUTURE_MS {
        return Err(invalid_argument(field, "must not be more than 24 hours in the future"));
    }
    Ok(ms)
}
