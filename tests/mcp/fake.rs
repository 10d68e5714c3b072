//! A fake MCP server for the MCP end-to-end tests (`#[path = "mcp/fake.rs"] mod fake;`): it
//! lists the tools a test sets (paged, as JSON or as an SSE stream with a progress event
//! first), answers `tools/call` with the tool's name and the `Authorization` it received (so a
//! test can see whether an injected credential comes back), answers other requests with an
//! empty result and notifications with 202, and records every request it receives, headers
//! and body as sent.
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

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub headers: http::HeaderMap,
    /// The body bytes exactly as received.
    pub raw: Bytes,
    pub body: Value,
}

#[derive(Debug, Default)]
struct State {
    tools: Vec<Value>,
    /// Tools per `tools/list` page (0: all on one page).
    page: usize,
    sse: bool,
    /// Speak only the 2025 session era: a 2026-07-28 request gets 400.
    legacy_only: bool,
    seen: Vec<Seen>,
}

/// The fake server, on a free 127.0.0.1 port.
pub struct FakeMcp {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeMcp {
    /// A server listing `tools`.
    pub async fn start(tools: Vec<Value>) -> FakeMcp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            tools,
            ..State::default()
        }));
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, s.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeMcp { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// List these tools from now on (a server changing its definitions).
    pub fn set_tools(&self, tools: Vec<Value>) {
        self.state.lock().unwrap().tools = tools;
    }

    /// Answer with SSE streams (`true`) or JSON bodies.
    pub fn set_sse(&self, sse: bool) {
        self.state.lock().unwrap().sse = sse;
    }

    /// Refuse 2026-07-28 requests with 400, as a server of the session era does.
    pub fn set_legacy_only(&self, legacy: bool) {
        self.state.lock().unwrap().legacy_only = legacy;
    }

    /// List `n` tools per page (0: all at once).
    pub fn set_page(&self, n: usize) {
        self.state.lock().unwrap().page = n;
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The methods of the requests received so far.
    pub fn methods(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|s| s.body["method"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for FakeMcp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tool definition.
pub fn tool(name: &str, description: &str) -> Value {
    json!({"name": name, "description": description,
        "inputSchema": {"type": "object", "properties": {"customer": {"type": "string"}}}})
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let raw = body.collect().await.unwrap().to_bytes();
    let message: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let (result, sse, legacy) = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            headers: parts.headers.clone(),
            raw: raw.clone(),
            body: message.clone(),
        });
        (result(&s, &message, &parts.headers), s.sse, s.legacy_only)
    };
    if legacy && message["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"].is_string() {
        return Ok(Response::builder()
            .status(400)
            .body(Full::new(Bytes::from_static(
                b"Bad Request: No valid session ID provided",
            )))
            .unwrap());
    }
    let Some(id) = message.get("id").cloned() else {
        return Ok(Response::builder()
            .status(202)
            .body(Full::new(Bytes::new()))
            .unwrap());
    };
    let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
    if sse {
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": 1, "progress": 1}});
        let body = format!("event: message\ndata: {progress}\n\nevent: message\ndata: {reply}\n\n");
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from(body)))
            .unwrap());
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.to_string())))
        .unwrap())
}

fn result(s: &State, message: &Value, headers: &http::HeaderMap) -> Value {
    match message["method"].as_str() {
        Some("tools/list") => {
            let start: usize = message["params"]["cursor"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let size = if s.page == 0 { s.tools.len() } else { s.page };
            let page: Vec<Value> = s.tools.iter().skip(start).take(size).cloned().collect();
            let mut result = json!({"tools": page});
            if start + size < s.tools.len() {
                result["nextCursor"] = json!((start + size).to_string());
            }
            result
        }
        Some("tools/call") => {
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            json!({"content": [{"type": "text",
                "text": format!("called {} with {auth}", message["params"]["name"].as_str().unwrap_or_default())}]})
        }
        _ => json!({}),
    }
}
