//! The gRPC server every service runs (health, reflection v1 and v1alpha, `GET /metrics` over
//! HTTP/1.1 and nothing else over HTTP/1, one tracing span per RPC parented on the caller's
//! `traceparent`) and the client channel builder. Shutdown order: health
//! goes NOT_SERVING, the drain delay passes so readiness notices, then the server stops accepting
//! and drains in-flight calls.
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use opentelemetry::propagation::Extractor;
use tokio::net::TcpListener;
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{
    service::Routes,
    transport::{Channel, Endpoint, Server},
};
use tonic_health::ServingStatus;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::{GrpcSettings, Peers, ShutdownSettings};

/// One incoming call as the server saw it (tests check trace and deadline propagation with it).
#[derive(Debug, Clone)]
pub struct RecordedCall {
    pub path: String,
    pub traceparent: Option<String>,
    pub grpc_timeout: Option<String>,
}

/// Records the headers of every incoming call when installed (tests only; production passes None).
#[derive(Debug, Clone, Default)]
pub struct CallRecorder(Arc<Mutex<Vec<RecordedCall>>>);

impl CallRecorder {
    /// Returns every call recorded so far.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, call: RecordedCall) {
        if let Ok(mut calls) = self.0.lock() {
            calls.push(call);
        }
    }
}

/// Tower layer opening one span per RPC, parented on the caller's trace context, and counting
/// and timing each RPC for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct TraceLayer {
    recorder: Option<CallRecorder>,
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner, recorder: self.recorder.clone() }
    }
}

/// The service [`TraceLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
    recorder: Option<CallRecorder>,
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Tells whether an HTTP/1 request is one the port serves over HTTP/1 (`GET`/`HEAD /metrics`).
/// Every other HTTP/1 request is refused before routing, so a web page cannot call an RPC with a
/// cross-site HTTP/1.1 POST: gRPC is HTTP/2 only.
fn http1_allowed<B>(request: &http::Request<B>) -> bool {
    request.uri().path() == crate::metrics::PATH && matches!(*request.method(), http::Method::GET | http::Method::HEAD)
}

impl<S, B, ResBody> Service<http::Request<B>> for TraceService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.version() < http::Version::HTTP_2 && !http1_allowed(&request) {
            let mut refused = http::Response::new(ResBody::default());
            *refused.status_mut() = http::StatusCode::HTTP_VERSION_NOT_SUPPORTED;
            return Box::pin(std::future::ready(Ok(refused)));
        }
        let headers = request.headers();
        let path = request.uri().path().to_owned();
        if let Some(recorder) = &self.recorder {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            recorder.record(RecordedCall {
                path: path.clone(),
                traceparent: header("traceparent"),
                grpc_timeout: header("grpc-timeout"),
            });
        }
        let parent =
            opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
        let span = tracing::info_span!("grpc.request", rpc = %path);
        let _ = span.set_parent(parent);
        // The ready service is the one poll_ready prepared; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        if path == crate::metrics::PATH {
            return Box::pin(ready.call(request).instrument(span));
        }
        let started = std::time::Instant::now();
        let answer = ready.call(request).instrument(span);
        Box::pin(async move {
            let result = answer.await;
            if let Ok(response) = &result {
                // An error travels as a trailers-only answer (grpc-status in the headers); a success
                // sends its status in the trailers, after the body.
                let code = tonic::Status::from_header_map(response.headers()).map_or(tonic::Code::Ok, |s| s.code());
                crate::metrics::observe_rpc(&path, code, started.elapsed());
            }
            result
        })
    }
}

/// What a service hands the server: its routes and the names health reports on.
pub struct ServiceRoutes {
    pub routes: Routes,
    pub service_names: Vec<&'static str>,
}

/// Serves `routes` plus health and reflection on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// The transport failed.
pub async fn serve(
    listener: TcpListener,
    service: ServiceRoutes,
    grpc: &GrpcSettings,
    shutdown_settings: &ShutdownSettings,
    shutdown: CancellationToken,
    recorder: Option<CallRecorder>,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    for name in service.service_names.iter().copied().chain([""]) {
        reporter.set_service_status(name, ServingStatus::Serving).await;
    }
    // Advertise only what this port serves (the descriptor set holds every service's protos).
    let advertised = |builder: tonic_reflection::server::Builder<'static>| {
        service
            .service_names
            .iter()
            .copied()
            .chain(["grpc.health.v1.Health"])
            .fold(builder, |b, name| b.with_service_name(name))
    };
    let reflection_v1 = advertised(tonic_reflection::server::Builder::configure())
        .register_encoded_file_descriptor_set(mesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set is generated by build.rs from valid protos");
    let reflection_v1alpha = advertised(tonic_reflection::server::Builder::configure())
        .register_encoded_file_descriptor_set(mesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the descriptor set is generated by build.rs from valid protos");
    let routes = service.routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
    let routes = Routes::from(
        routes.into_axum_router().route(crate::metrics::PATH, axum::routing::get(crate::metrics::handler)),
    );
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        // Small unary replies must not wait for Nagle's algorithm.
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    let drain_delay = shutdown_settings.drain_delay;
    let names = service.service_names.clone();
    let stop = async move {
        shutdown.cancelled().await;
        for name in names.iter().copied().chain([""]) {
            reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
        tokio::time::sleep(drain_delay).await;
    };
    Server::builder()
        // HTTP/1.1 for `GET /metrics` only ([`http1_allowed`]); gRPC is HTTP/2.
        .accept_http1(true)
        .timeout(grpc.request_timeout)
        .concurrency_limit_per_connection(grpc.max_concurrent_per_connection)
        .layer(TraceLayer { recorder })
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
}

/// Binds a listener (port 0 picks a free one).
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Builds a lazily connecting channel to a peer (the service starts even when peers are down).
///
/// # Errors
/// The address is not a valid URI.
pub fn peer_channel(address: &str, peers: &Peers) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(address.to_owned())?
        .connect_timeout(peers.connect_timeout)
        .timeout(peers.call_timeout.max(Duration::from_millis(1)))
        .tcp_nodelay(true)
        .connect_lazy())
}
