//! Real servers for the credential tests: a tool that echoes the credential it received back
//! in its response headers (so scrubbing is exercised), and a local RFC 8693 STS.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as a server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// The form-encoded body as a map.
    pub fn form(&self) -> BTreeMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The bearer token in `authorization`.
    pub fn bearer(&self) -> String {
        let auth = self.headers["authorization"].to_str().unwrap();
        auth.strip_prefix("Bearer ")
            .expect("a bearer token")
            .to_string()
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// A server on 127.0.0.1 answering every request with `handler`, recording what it got.
pub struct Server {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Server {
    async fn start(handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let conns = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (rec, handler) = (rec.clone(), handler.clone());
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (rec, handler) = (rec.clone(), handler.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: parts.method.to_string(),
                                target: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let response = handler(&seen);
                            rec.lock().unwrap().push(seen);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                conns.lock().unwrap().push(conn);
            }
        });
        Server {
            addr,
            seen,
            task,
            connections,
        }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting connections and drop the open ones (an outage).
    pub fn stop(&self) {
        self.task.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tool that answers `200 {"ok":true}` and echoes the credential headers and the request
/// target it received in `x-echo-*` response headers, as a careless tool might.
pub async fn echo_tool() -> Server {
    Server::start(Arc::new(|seen: &Seen| {
        let mut b = Response::builder().header("content-type", "application/json");
        for name in ["authorization", "x-api-token"] {
            if let Some(v) = seen.headers.get(name) {
                b = b.header(format!("x-echo-{name}"), v.clone());
            }
        }
        b = b.header("x-echo-target", seen.target.clone());
        b.body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
            .unwrap()
    }))
    .await
}

/// A token-exchange STS: issues `exchanged-<n>` tokens (`expires_in` 300, or 2 when the
/// requested scope contains `short`), or fails with `fail` (an HTTP status) when set.
pub struct Sts {
    pub server: Server,
    fail: Arc<AtomicU16>,
}

impl Sts {
    pub async fn start() -> Sts {
        let fail = Arc::new(AtomicU16::new(0));
        let issued = Arc::new(AtomicU64::new(0));
        let f = fail.clone();
        let server = Server::start(Arc::new(move |seen: &Seen| {
            let status = f.load(Ordering::SeqCst);
            if status != 0 {
                return Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(
                        b"{\"error\":\"server_error\",\"error_description\":\"down for maintenance\"}",
                    )))
                    .unwrap();
            }
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            let form = seen.form();
            let short = form.get("scope").is_some_and(|s| s.contains("short"));
            let body = serde_json::json!({
                "access_token": format!("exchanged-{n}-{}", form.get("audience").cloned().unwrap_or_default()),
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": if short { 2 } else { 300 },
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap()
        }))
        .await;
        Sts { server, fail }
    }

    /// Answer every request with `status` from now on (0: healthy again).
    pub fn fail_with(&self, status: u16) {
        self.fail.store(status, Ordering::SeqCst);
    }

    /// The token endpoint.
    pub fn endpoint(&self) -> String {
        format!("{}/token", self.server.url())
    }
}
