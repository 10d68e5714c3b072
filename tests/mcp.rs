//! MCP through toolgate: JSON-RPC calls classified per method, refused calls answered as
//! JSON-RPC errors the server never sees, batches all-or-nothing, SSE streamed back — with a
//! fake MCP server (hyper). The official SDKs are in `tests/mcp_sdk.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::Toolgate;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": true, "reason": "allowed"}

decision := {"allow": false, "reason": "deleting customers needs a human"} if {
	input.action.name == "crm.delete_customer"
}

decision := {"allow": false, "reason": "telemetry notifications are not allowed"} if {
	input.action.name == "crm.mcp.notifications_telemetry"
}
"#;

fn config(upstream: &str) -> String {
    format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: crm
    hosts: [crm.test]
    upstream: {upstream}
    protocol: mcp
policy: {{ files: [policy/*.rego] }}
limits: {{ connect_timeout: 2s, upstream_timeout: 10s, shutdown_timeout: 1s }}
"#
    )
}

/// A fake MCP server: answers each JSON-RPC request with a result naming its method (as an
/// SSE stream when the call is `tools/call` of `stream`, pausing after the first event until
/// `release` is notified), notifications with 202, and records every request body.
struct McpServer {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

type Body = BoxBody<Bytes, Infallible>;

impl McpServer {
    async fn start() -> McpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let release = Arc::new(Notify::new());
        let (b, r) = (bodies.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (b, r) = (b.clone(), r.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, b.clone(), r.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        McpServer {
            addr,
            bodies,
            release,
            task,
        }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn result_for(message: &Value) -> Option<Value> {
    let id = message.get("id")?;
    Some(json!({"jsonrpc": "2.0", "id": id, "result": {"method": message["method"]}}))
}

async fn answer(
    req: Request<Incoming>,
    bodies: Arc<Mutex<Vec<Value>>>,
    release: Arc<Notify>,
) -> Result<Response<Body>, Infallible> {
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let message: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    bodies.lock().unwrap().push(message.clone());
    let full = |status: u16, body: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())).boxed())
            .unwrap()
    };
    if let Value::Array(items) = &message {
        let results: Vec<Value> = items.iter().filter_map(result_for).collect();
        return Ok(full(200, Value::Array(results)));
    }
    if message["params"]["name"] == "stream" {
        let (tx, rx) = mpsc::channel::<Frame<Bytes>>(4);
        let id = message["id"].clone();
        tokio::spawn(async move {
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": 1, "progress": 1}});
            let _ = tx
                .send(Frame::data(Bytes::from(format!("data: {progress}\n\n"))))
                .await;
            release.notified().await;
            let done = json!({"jsonrpc": "2.0", "id": id, "result": {"done": true}});
            let _ = tx
                .send(Frame::data(Bytes::from(format!("data: {done}\n\n"))))
                .await;
        });
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(ChannelBody(rx).boxed())
            .unwrap());
    }
    Ok(match result_for(&message) {
        Some(result) => full(200, result),
        None => Response::builder()
            .status(202)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
    })
}

/// A response body fed by a channel: each frame is sent as soon as it is produced.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn start(server: &McpServer) -> Toolgate {
    let config = config(&format!("http://{}", server.addr));
    Toolgate::start(
        &format!("{config}admin: {{ token_file: operator-token }}\n"),
        &[("policy/main.rego", POLICY), support::OPERATOR_TOKEN_FILE],
    )
}

async fn post(tg: &Toolgate, body: Value) -> reqwest::Response {
    tg.forward_client()
        .post("http://crm.test/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("x-toolgate-task", "T-mcp")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_tools_call_reaches_the_server() {
    let server = McpServer::start().await;
    let tg = start(&server);
    let resp = post(&tg, call(1, "search", json!({"query": "acme"}))).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"jsonrpc": "2.0", "id": 1, "result": {"method": "tools/call"}})
    );
    assert_eq!(
        server.bodies(),
        vec![call(1, "search", json!({"query": "acme"}))]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_tools_call_is_a_json_rpc_error_the_server_never_sees() {
    let server = McpServer::start().await;
    let tg = start(&server);
    let resp = post(
        &tg,
        call(42, "delete_customer", json!({"customer": "acme"})),
    )
    .await;
    assert_eq!(
        resp.status(),
        200,
        "MCP clients expect the error inside HTTP 200"
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 42);
    assert_eq!(body["error"]["code"], -32001);
    assert_eq!(body["error"]["message"], "deleting customers needs a human");
    let data = &body["error"]["data"];
    assert_eq!(data["action"], "crm.delete_customer");
    assert_eq!(data["decision_id"].as_str().unwrap().len(), 36);
    assert_eq!(data["trace_id"].as_str().unwrap().len(), 32);
    assert!(
        server.bodies().is_empty(),
        "the server saw a denied call: {:?}",
        server.bodies()
    );
    assert!(tg.wait_for_log(data["decision_id"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_string_id_is_echoed_in_the_error() {
    let server = McpServer::start().await;
    let tg = start(&server);
    let mut message = call(0, "delete_customer", json!({}));
    message["id"] = json!("req-7");
    let body: Value = post(&tg, message).await.json().await.unwrap();
    assert_eq!(body["id"], "req-7");
    assert!(server.bodies().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_one_denied_member_reaches_nothing() {
    let server = McpServer::start().await;
    let tg = start(&server);
    let batch = json!([
        call(1, "search", json!({"query": "acme"})),
        call(2, "delete_customer", json!({"customer": "acme"})),
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}},
    ]);
    let resp = post(&tg, batch).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let errors = body.as_array().unwrap();
    assert_eq!(errors.len(), 2, "one error per member with an id: {body}");
    assert_eq!(errors[0]["id"], 1);
    assert_eq!(errors[0]["error"]["code"], -32002, "withheld: {body}");
    assert_eq!(errors[0]["error"]["data"]["action"], "crm.search");
    assert_eq!(errors[1]["id"], 2);
    assert_eq!(errors[1]["error"]["code"], -32001);
    assert_eq!(
        errors[1]["error"]["message"],
        "deleting customers needs a human"
    );
    assert_ne!(
        errors[0]["error"]["data"]["decision_id"], errors[1]["error"]["data"]["decision_id"],
        "each member is its own decision"
    );
    assert!(server.bodies().is_empty(), "{:?}", server.bodies());
    // The exchange is recorded as the refusing member's; the chain holds every member, each
    // with the refusal's status, so no chain rule counts the withheld search as done.
    assert!(
        tg.wait_for_log(r#"action=crm.delete_customer decision="deny""#),
        "{}",
        tg.logs()
    );
    let chain = support::operator_json(tg.admin, "/v1/tasks/T-mcp");
    let entries = chain["chain"]
        .as_array()
        .unwrap_or_else(|| panic!("{chain}"));
    let seen: Vec<(&str, &str, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("crm.search", "allow", 403),
            ("crm.delete_customer", "deny", 403),
            ("crm.mcp.notifications_progress", "allow", 403)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_allowed_members_is_forwarded_whole() {
    let server = McpServer::start().await;
    let tg = start(&server);
    let batch = json!([
        call(1, "search", json!({"query": "a"})),
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]);
    let resp = post(&tg, batch.clone()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body.as_array().unwrap().len(), 2, "{body}");
    assert_eq!(server.bodies(), vec![batch]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_notification_is_a_403_problem() {
    let server = McpServer::start().await;
    let tg = start(&server);
    let note = json!({"jsonrpc": "2.0", "method": "notifications/telemetry", "params": {}});
    let (status, body) = support::problem(post(&tg, note).await).await;
    assert_eq!(status, 403);
    assert_eq!(body["action"], "crm.mcp.notifications_telemetry");
    assert!(server.bodies().is_empty());
    let allowed = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(&tg, allowed.clone()).await.status(), 202);
    assert_eq!(server.bodies(), vec![allowed]);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_rpc_is_rejected_before_the_server() {
    let server = McpServer::start().await;
    let tg = start(&server);
    for bad in [
        json!([]),
        json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}}),
    ] {
        let (status, body) = support::problem(post(&tg, bad.clone()).await).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["type"], "urn:toolgate:problem:rejected");
    }
    assert!(server.bodies().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_responses_stream_back_event_by_event() {
    let server = McpServer::start().await;
    let tg = start(&server);
    let mut resp = post(&tg, call(9, "stream", json!({}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The server holds its last event until the first one has arrived here: a proxy that
    // buffered the response would never deliver it.
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the first event did not stream through")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("notifications/progress"));
    server.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .unwrap()
        .unwrap();
    assert!(rest.contains(r#""done":true"#), "{rest}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_and_delete_are_the_stream_and_terminate_actions() {
    let server = McpServer::start().await;
    let tg = Toolgate::start(
        &config(&format!("http://{}", server.addr)),
        &[(
            "policy/main.rego",
            "package toolgate\nimport rego.v1\ndecision := {\"allow\": false, \"reason\": input.action.name}\n",
        )],
    );
    for (method, action) in [
        (reqwest::Method::GET, "crm.mcp.stream"),
        (reqwest::Method::DELETE, "crm.mcp.terminate"),
    ] {
        let resp = tg
            .forward_client()
            .request(method, "http://crm.test/mcp")
            .send()
            .await
            .unwrap();
        let (status, body) = support::problem(resp).await;
        assert_eq!((status, body["action"].as_str()), (403, Some(action)));
    }
}
