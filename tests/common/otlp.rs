//! A real OTLP receiver for tests: gRPC (tonic, the official protos) and
//! HTTP/protobuf (`POST /v1/traces`, `/v1/metrics`), decoding what arrives on
//! the wire into flat records.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric;
use prost::Message as _;
use tokio::sync::Notify;

/// One received span.
#[derive(Debug, Clone)]
pub struct WireSpan {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub links: Vec<(String, String)>,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl WireSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One received metric data point.
#[derive(Debug, Clone)]
pub struct WirePoint {
    pub service: String,
    pub metric: String,
    pub unit: String,
    /// `sum`, `monotonic_sum`, `gauge` or `histogram`.
    pub kind: &'static str,
    pub attributes: BTreeMap<String, String>,
    /// Sum/gauge value, or histogram sum.
    pub value: f64,
    pub count: u64,
}

impl WirePoint {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The OTLP data type (a [`WirePoint::kind`]) an instrument of `kind` is
/// exported as by the OpenTelemetry SDK.
pub fn wire_kind(kind: bg_queue::InstrumentKind) -> &'static str {
    match kind {
        bg_queue::InstrumentKind::Counter => "monotonic_sum",
        bg_queue::InstrumentKind::UpDownCounter => "sum",
        bg_queue::InstrumentKind::Gauge => "gauge",
        bg_queue::InstrumentKind::Histogram => "histogram",
    }
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<WireSpan>>,
    points: Mutex<Vec<WirePoint>>,
    requests: Mutex<u64>,
    changed: Notify,
}

/// A running receiver; dropped with the test's runtime.
#[derive(Clone)]
pub struct Receiver {
    store: Arc<Store>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn service_of(resource: &Option<opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .as_ref()
        .map(|r| attributes(&r.attributes))
        .and_then(|a| a.get("service.name").cloned())
        .unwrap_or_default()
}

impl Store {
    fn add_traces(&self, request: ExportTraceServiceRequest) {
        let mut out = Vec::new();
        for resource_spans in request.resource_spans {
            let service = service_of(&resource_spans.resource);
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let status = span.status.clone().unwrap_or_default();
                    out.push(WireSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name.clone(),
                        attributes: attributes(&span.attributes),
                        status_code: status.code,
                        status_message: status.message,
                        links: span
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano,
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(out);
        *self.requests.lock().unwrap() += 1;
        self.changed.notify_waiters();
    }

    fn add_metrics(&self, request: ExportMetricsServiceRequest) {
        let mut out = Vec::new();
        for resource_metrics in request.resource_metrics {
            let service = service_of(&resource_metrics.resource);
            for scope in resource_metrics.scope_metrics {
                for m in scope.metrics {
                    let base = |kind, attrs: &[KeyValue], value, count| WirePoint {
                        service: service.clone(),
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        kind,
                        attributes: attributes(attrs),
                        value,
                        count,
                    };
                    let number = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| {
                        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
                        match p.value {
                            Some(Value::AsDouble(d)) => d,
                            Some(Value::AsInt(i)) => i as f64,
                            None => f64::NAN,
                        }
                    };
                    match &m.data {
                        Some(metric::Data::Sum(sum)) => {
                            let kind = if sum.is_monotonic {
                                "monotonic_sum"
                            } else {
                                "sum"
                            };
                            for p in &sum.data_points {
                                out.push(base(kind, &p.attributes, number(p), 0));
                            }
                        }
                        Some(metric::Data::Gauge(gauge)) => {
                            for p in &gauge.data_points {
                                out.push(base("gauge", &p.attributes, number(p), 0));
                            }
                        }
                        Some(metric::Data::Histogram(h)) => {
                            for p in &h.data_points {
                                out.push(base(
                                    "histogram",
                                    &p.attributes,
                                    p.sum.unwrap_or(0.0),
                                    p.count,
                                ));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        self.points.lock().unwrap().extend(out);
        *self.requests.lock().unwrap() += 1;
        self.changed.notify_waiters();
    }
}

struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add_traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.add_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Receiver {
    /// Starts both listeners on 127.0.0.1, on free ports.
    pub async fn start() -> Self {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
    }

    /// Starts both listeners on the given addresses.
    pub async fn start_on(grpc: SocketAddr, http: SocketAddr) -> Self {
        let store = Arc::new(Store::default());
        let grpc_listener = tokio::net::TcpListener::bind(grpc).await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let service = Grpc(store.clone());
        let service2 = Grpc(store.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                // Collectors compress by default (rotel: gzip).
                .add_service(
                    TraceServiceServer::new(service)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .add_service(
                    MetricsServiceServer::new(service2)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                    grpc_listener,
                ))
                .await
                .unwrap();
        });

        let http_listener = tokio::net::TcpListener::bind(http).await.unwrap();
        let http = http_listener.local_addr().unwrap();
        let traces_store = store.clone();
        let metrics_store = store.clone();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(move |body: Bytes| async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            traces_store.add_traces(request);
                            (
                                axum::http::StatusCode::OK,
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                    }
                }),
            )
            .route(
                "/v1/metrics",
                post(move |body: Bytes| async move {
                    match ExportMetricsServiceRequest::decode(body) {
                        Ok(request) => {
                            metrics_store.add_metrics(request);
                            (
                                axum::http::StatusCode::OK,
                                ExportMetricsServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                    }
                }),
            )
            .layer(tower_http::decompression::RequestDecompressionLayer::new());
        tokio::spawn(async move {
            axum::serve(http_listener, app).await.unwrap();
        });
        Receiver { store, grpc, http }
    }

    pub fn spans(&self) -> Vec<WireSpan> {
        self.store.spans.lock().unwrap().clone()
    }

    pub fn points(&self) -> Vec<WirePoint> {
        self.store.points.lock().unwrap().clone()
    }

    pub fn requests(&self) -> u64 {
        *self.store.requests.lock().unwrap()
    }

    /// Waits until `ready` holds for what was received, or `limit` passes
    /// (then panics with `what`). Woken by each export, not by polling.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        limit: Duration,
        mut ready: impl FnMut(&Receiver) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.store.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(value) = ready(self) {
                return value;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                if let Some(value) = ready(self) {
                    return value;
                }
                panic!(
                    "timed out after {limit:?} waiting for {what}; received {} spans, {} points",
                    self.spans().len(),
                    self.points().len()
                );
            }
        }
    }
}
