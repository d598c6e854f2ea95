//! The context of an incoming call that outgoing calls inherit: the caller's deadline (from the
//! `grpc-timeout` header), shrunk by the time already spent, and the W3C trace context of the
//! current span. A downstream call never gets more time than the caller has left.
use std::time::{Duration, Instant};

use opentelemetry::propagation::Injector;
use tonic::{Request, Status, metadata::MetadataMap};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Deadline and trace context of the call being served.
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    deadline: Option<Instant>,
}

impl CallContext {
    /// Captures the caller's deadline from the request's `grpc-timeout` header.
    pub fn from_request<T>(request: &Request<T>) -> Self {
        let timeout = request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        Self { deadline: timeout.map(|t| Instant::now() + t) }
    }

    /// A context with no caller deadline (background work).
    pub fn background() -> Self {
        Self { deadline: None }
    }

    /// A context whose deadline is `timeout` from now.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self { deadline: Some(Instant::now() + timeout) }
    }

    /// Time the caller has left, if it set a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Builds an outgoing request: timeout = min(caller's remaining time, `ceiling`), plus the
    /// current span's trace context.
    ///
    /// # Errors
    /// DEADLINE_EXCEEDED when the caller has no time left (the call is not made).
    pub fn request<M>(&self, message: M, ceiling: Duration) -> Result<Request<M>, Status> {
        let timeout = match self.remaining() {
            Some(left) if left.is_zero() => return Err(Status::deadline_exceeded("caller deadline exceeded")),
            Some(left) => left.min(ceiling),
            None => ceiling,
        };
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        inject_trace_context(request.metadata_mut());
        Ok(request)
    }
}

/// Writes the current span's W3C trace context into outgoing metadata.
pub fn inject_trace_context(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(&value))
        {
            self.0.insert(key, value);
        }
    }
}

/// Parses a `grpc-timeout` header value ("100m", "5S", …).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_grpc_timeout_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }

    #[test]
    fn outgoing_timeout_never_exceeds_the_callers_remaining_time() {
        let mut incoming = Request::new(());
        incoming.metadata_mut().insert("grpc-timeout", "100m".parse().unwrap());
        let context = CallContext::from_request(&incoming);
        let outgoing = context.request((), Duration::from_secs(5)).unwrap();
        let sent = parse_grpc_timeout(outgoing.metadata().get("grpc-timeout").unwrap().to_str().unwrap()).unwrap();
        assert!(sent <= Duration::from_millis(100), "sent {sent:?}");
        assert!(sent > Duration::from_millis(50), "sent {sent:?}");
    }

    #[test]
    fn no_call_is_made_once_the_caller_ran_out_of_time() {
        let context = CallContext::with_timeout(Duration::ZERO);
        let error = context.request((), Duration::from_secs(5)).unwrap_err();
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
    }
}
