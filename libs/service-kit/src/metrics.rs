//! The process's metrics in the Prometheus text format, answered at `GET /metrics` on every gRPC
//! port (HTTP/1.1 beside HTTP/2 gRPC). Metrics are registered where they are counted (the counter
//! engine's script reloads, the reservation sweeper's expiries, every RPC by the server layer) in
//! the default registry; in the all-in-one `run` process every port shows the same registry.
use std::{sync::LazyLock, time::Duration};

use axum::{http::header::CONTENT_TYPE, response::IntoResponse};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
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

static RPCS_HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = IntCounterVec::new(
        Opts::new("inventory_mesh_grpc_server_handled_total", "RPCs answered, by method and gRPC status code"),
        &["grpc_service", "grpc_method", "grpc_code"],
    )
    .expect("a valid metric definition");
    let _ = prometheus::register(Box::new(counter.clone()));
    counter
});

static RPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "inventory_mesh_grpc_server_handling_seconds",
        "Time from an RPC's arrival to its response headers (for a stream: until it opens)",
    )
    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
    let histogram = HistogramVec::new(opts, &["grpc_service", "grpc_method"]).expect("a valid metric definition");
    let _ = prometheus::register(Box::new(histogram.clone()));
    histogram
});

/// The name Prometheus exporters of gRPC give a status code (`OK`, `InvalidArgument`, ...).
fn code_name(code: i32) -> String {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Records one answered RPC. `path` is `/package.Service/Method`; a path no service has
/// (UNIMPLEMENTED) is recorded as `unknown`, so callers cannot grow the label set.
pub(crate) fn observe_rpc(path: &str, code: i32, elapsed: Duration) {
    let (service, method) = match path.trim_start_matches('/').split_once('/') {
        Some(parts) if code != tonic::Code::Unimplemented as i32 => parts,
        _ => ("unknown", "unknown"),
    };
    RPCS_HANDLED.with_label_values(&[service, method, &code_name(code)]).inc();
    RPC_SECONDS.with_label_values(&[service, method]).observe(elapsed.as_secs_f64());
}
