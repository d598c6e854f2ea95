//! The process's metrics in the Prometheus text format, answered at `GET /metrics` on every gRPC
//! port (HTTP/1.1 beside HTTP/2 gRPC). Metrics are registered where they are counted (the counter
//! engine's script reloads, the reservation sweeper's expiries, every RPC by the server layer) in
//! the default registry; in the all-in-one `run` process every port shows the same registry.
use std::{sync::LazyLock, time::Duration};

use axum::{http::header::CONTENT_TYPE, response::IntoResponse};
use prometheus::{
    HistogramVec, IntCounterVec, histogram_opts, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge,
};
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
/// The name is invalid or already registered (a programming error).
pub fn counter(name: &str, help: &str) -> IntCounter {
    register_int_counter!(name, help).expect("a valid name, registered once")
}

/// A gauge in the process registry (call once per name, from a `LazyLock`).
///
/// # Panics
/// The name is invalid or already registered (a programming error).
pub fn gauge(name: &str, help: &str) -> IntGauge {
    register_int_gauge!(name, help).expect("a valid name, registered once")
}

static RPCS_HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "inventory_mesh_grpc_server_handled_total",
        "RPCs answered, by method and gRPC status code",
        &["grpc_service", "grpc_method", "grpc_code"]
    )
    .expect("registered once, from this LazyLock")
});

static RPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        histogram_opts!(
            "inventory_mesh_grpc_server_handling_seconds",
            "Time from an RPC's arrival to its response headers (for a stream: until it opens)",
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        ),
        &["grpc_service", "grpc_method"]
    )
    .expect("registered once, from this LazyLock")
});

/// The name Prometheus exporters of gRPC give a status code (`OK`, `InvalidArgument`, ...).
fn code_name(code: tonic::Code) -> String {
    match code {
        tonic::Code::Ok => "OK".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Records one answered RPC. `path` is `/package.Service/Method`; a path no service has
/// (UNIMPLEMENTED) is recorded as `unknown`, so callers cannot grow the label set.
pub(crate) fn observe_rpc(path: &str, code: tonic::Code, elapsed: Duration) {
    let (service, method) = match path.trim_start_matches('/').split_once('/') {
        Some(parts) if code != tonic::Code::Unimplemented => parts,
        _ => ("unknown", "unknown"),
    };
    RPCS_HANDLED.with_label_values(&[service, method, &code_name(code)]).inc();
    RPC_SECONDS.with_label_values(&[service, method]).observe(elapsed.as_secs_f64());
}
