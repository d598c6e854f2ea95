//! The process's metrics in the Prometheus text format, answered at `GET /metrics` on every gRPC
//! port (HTTP/1.1 beside HTTP/2 gRPC). Metrics are registered where they are counted (the counter
//! engine's script reloads, the reservation sweeper's expiries) in the default registry; in the
//! all-in-one `run` process every port shows the same registry.
use axum::{http::header::CONTENT_TYPE, response::IntoResponse};

pub use prometheus::{IntCounter, IntGauge};

/// The path the metrics are served at.
pub const PATH: &str = "/metrics";

/// Renders every registered metric in the Prometheus text exposition format.
pub fn render() -> String {
    let mut text = String::new();
    if let Err(error) = prometheus::TextEncoder::new().encode_utf8(&prometheus::gather(), &mut text) {
        tracing::warn!(%error, "metrics could not be rendered");
    }
    text
}

/// The `GET /metrics` handler.
pub(crate) async fn handler() -> impl IntoResponse {
    ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], render())
}

/// A counter in the process registry (call once per name, from a `LazyLock`).
///
/// # Panics
/// The name is not a valid metric name (a programming error).
pub fn counter(name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("a valid metric name");
    // Registering a name twice is the only failure left; the counter still counts.
    let _ = prometheus::register(Box::new(counter.clone()));
    counter
}

/// A gauge in the process registry (call once per name, from a `LazyLock`).
///
/// # Panics
/// The name is not a valid metric name (a programming error).
pub fn gauge(name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("a valid metric name");
    let _ = prometheus::register(Box::new(gauge.clone()));
    gauge
}
