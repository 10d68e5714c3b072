//! The demo's fake tools: one small HTTP server per catalogued tool on 127.0.0.1, answering
//! every request with JSON (a JSON-RPC result when the request is JSON-RPC, as an MCP server
//! would) and remembering the `traceparent` each request carried.

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
use tokio::net::TcpListener;

/// What a fake tool saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub traceparent: Option<String>,
    /// Whether the agent's own credential reached the tool (it must not).
    pub agent_credential: bool,
}

/// A running fake tool.
#[derive(Debug)]
pub struct FakeTool {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeTool {
    /// Start a fake tool named `name` on an ephemeral loopback port.
    pub async fn start(name: &str, agent_token: &'static str) -> std::io::Result<FakeTool> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let tool = name.to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let tool = tool.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| answer(req, tool.clone(), log.clone(), agent_token));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FakeTool {
            name: name.to_string(),
            addr,
            seen,
        })
    }

    /// The requests this tool received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn answer(
    req: Request<Incoming>,
    tool: String,
    log: Arc<Mutex<Vec<Seen>>>,
    agent_token: &'static str,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Ok(mut log) = log.lock() {
        log.push(Seen {
            traceparent: header("traceparent"),
            agent_credential: header("authorization").is_some_and(|a| a.contains(agent_token)),
        });
    }
    let rpc: Option<serde_json::Value> = serde_json::from_slice(&body)
        .ok()
        .filter(|v: &serde_json::Value| v.get("jsonrpc").is_some());
    let reply = match rpc {
        Some(call) => serde_json::json!({
            "jsonrpc": "2.0",
            "id": call.get("id").cloned().unwrap_or(serde_json::Value::Null),
            "result": { "content": [ { "type": "text", "text": format!("{tool}: done") } ] },
        }),
        None => serde_json::json!({ "ok": true, "tool": tool }),
    };
    let mut response = Response::new(Full::new(Bytes::from(reply.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
