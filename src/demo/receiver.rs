//! The demo's in-process trace store: an OTLP/HTTP receiver on 127.0.0.1 that decodes what
//! toolgate exports and, when asked, passes the same bytes on to a real trace store (Jaeger,
//! Tempo, Arize Phoenix) over OTLP/HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// Largest export request accepted (toolgate's batches are far smaller).
const MAX_BODY: usize = 16 << 20;

#[derive(Debug, Default)]
struct State {
    spans: Vec<Span>,
    /// Outcome of passing exports on, one line per failure.
    forward_errors: Vec<String>,
    forwarded: usize,
}

/// A running receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Listen on an ephemeral loopback port; pass every export on to `forward` if given.
    pub async fn start(forward: Option<http::Uri>) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                let forward = forward.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        receive(req, state.clone(), forward.clone(), client.clone())
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Receiver { addr, state })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.state
            .lock()
            .map(|s| s.spans.clone())
            .unwrap_or_default()
    }

    /// (exports passed on, failures to pass them on).
    pub fn forwarded(&self) -> (usize, Vec<String>) {
        self.state
            .lock()
            .map(|s| (s.forwarded, s.forward_errors.clone()))
            .unwrap_or_default()
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    r
}

async fn receive(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    forward: Option<http::Uri>,
    client: Client<HttpConnector, Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/v1/traces" {
        return Ok(reply(StatusCode::NOT_FOUND, Vec::new()));
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let Ok(body) = limited.collect().await.map(|b| b.to_bytes()) else {
        return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, Vec::new()));
    };
    let Ok(export) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return Ok(reply(StatusCode::BAD_REQUEST, Vec::new()));
    };
    if let Ok(mut s) = state.lock() {
        for rs in export.resource_spans {
            for ss in rs.scope_spans {
                s.spans.extend(ss.spans);
            }
        }
    }
    if let Some(uri) = forward {
        let outcome = pass_on(&client, uri, body).await;
        if let Ok(mut s) = state.lock() {
            match outcome {
                Ok(()) => s.forwarded += 1,
                Err(e) => s.forward_errors.push(e),
            }
        }
    }
    Ok(reply(
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    ))
}

async fn pass_on(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: http::Uri,
    body: Bytes,
) -> Result<(), String> {
    let request = Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{uri}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{uri} answered {}", response.status()))
    }
}
