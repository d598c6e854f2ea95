//! Logs and traces: `tracing-subscriber` (env filter; JSON in clusters), an OpenTelemetry layer so
//! every span has a W3C trace context, the W3C propagator, and an OTLP exporter when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The returned guard flushes on shutdown.
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::TelemetrySettings;

/// Flushes traces when shut down.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Flushes and stops the trace pipeline.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "trace pipeline did not shut down cleanly");
        }
    }
}

fn provider(service_name: &str) -> SdkTracerProvider {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => return builder.with_batch_exporter(exporter).build(),
            Err(error) => eprintln!("OTLP exporter not started: {error}"),
        }
    }
    builder.build()
}

/// Installs logging, tracing and the W3C propagator for the process.
pub fn init(service_name: &str, settings: &TelemetrySettings) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = provider(service_name);
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("inventory-mesh"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_filter));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if settings.json_logs {
        registry.with(tracing_subscriber::fmt::layer().json()).try_init()
    } else {
        // Colours only on a terminal: a log file or collector gets plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        registry.with(tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi)).try_init()
    };
    // A second init in one process (tests) keeps the first subscriber.
    drop(result);
    TelemetryGuard { provider }
}

/// Installs the propagator and a span pipeline for tests; logs only when `TEST_LOG` is set.
pub fn init_for_tests() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = provider("test");
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
    let registry = tracing_subscriber::registry().with(otel);
    let result = if std::env::var_os("TEST_LOG").is_some() {
        registry.with(EnvFilter::new("info")).with(tracing_subscriber::fmt::layer().with_test_writer()).try_init()
    } else {
        registry.with(EnvFilter::new("info")).try_init()
    };
    drop(result);
}
