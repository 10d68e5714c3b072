//! A real OTLP trace receiver for end-to-end tests: OTLP/HTTP (protobuf, via hyper) or
//! OTLP/gRPC (via tonic) on 127.0.0.1, decoding requests with `opentelemetry-proto` and
//! keeping every span with its resource, and every raw request body.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// One received span and the resource it came with.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub resource: Resource,
}

#[derive(Debug, Default)]
struct Store {
    spans: Vec<Received>,
    /// Every request body as received (protobuf bytes), to search for what must not be there.
    bodies: Vec<Vec<u8>>,
    /// Every OTLP/HTTP request's headers.
    headers: Vec<http::HeaderMap>,
}

impl Store {
    fn add(&mut self, raw: Vec<u8>, request: ExportTraceServiceRequest) {
        for rs in request.resource_spans {
            let resource = rs.resource.unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    self.spans.push(Received {
                        span,
                        resource: resource.clone(),
                    });
                }
            }
        }
        self.bodies.push(raw);
    }
}

/// An OTLP receiver running on the test's runtime.
pub struct Receiver {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// OTLP/HTTP with protobuf bodies at `/v1/traces`.
    pub async fn http() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store: Arc<Mutex<Store>> = Arc::default();
        let s = store.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| http_export(req, s.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, store, task }
    }

    /// OTLP/gRPC (the collector's `TraceService`).
    pub async fn grpc() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store: Arc<Mutex<Store>> = Arc::default();
        let service = TraceServiceServer::new(GrpcService(store.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Receiver { addr, store, task }
    }

    /// `telemetry.otlp.endpoint` for this receiver.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.store.lock().unwrap().spans.clone()
    }

    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.store.lock().unwrap().bodies.clone()
    }

    /// The headers of every OTLP/HTTP export request received.
    pub fn headers(&self) -> Vec<http::HeaderMap> {
        self.store.lock().unwrap().headers.clone()
    }

    /// Wait (up to 30 s) until at least `n` spans arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            if Instant::now() > deadline {
                panic!("expected {n} spans, received {}: {spans:#?}", spans.len());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn http_export(
    req: Request<Incoming>,
    store: Arc<Mutex<Store>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    store.lock().unwrap().headers.push(req.headers().clone());
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if path != "/v1/traces" || content_type != "application/x-protobuf" {
        return Ok(Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let request = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
    store.lock().unwrap().add(body.to_vec(), request);
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    Ok(Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(reply)))
        .unwrap())
}

struct GrpcService(Arc<Mutex<Store>>);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let raw = request.encode_to_vec();
        self.0.lock().unwrap().add(raw, request);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An attribute's value.
pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// A string attribute, or `None` (also when it has another type).
pub fn string<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attributes, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// An integer attribute, or `None` (also when it has another type, e.g. a string).
pub fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}
