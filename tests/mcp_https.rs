//! MCP over HTTPS through a CONNECT tunnel, with a minted credential: Python `requests` with
//! HTTPS_PROXY and toolgate's CA sends JSON-RPC to an https MCP tool (`protocol: mcp`);
//! toolgate decrypts, classifies each call by its body, answers a denied call with the
//! JSON-RPC error the server never sees, and gives an allowed request (a single call, or a
//! batch) exactly one JWT scoped to every action it performs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::{TestCa, Toolgate};
use tokio::net::TcpListener;

const AGENT: &str = "spiffe://test/ns/a/sa/agent";

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "looking customers up is allowed"} if input.action.name == "crm.lookup_customer"

decision := {"allow": true, "reason": "listing orders is allowed"} if input.action.name == "crm.list_orders"

decision := {"allow": false, "reason": "deleting customers needs a human"} if input.action.name == "crm.delete_customer"
"#;

/// One request as the MCP server received it.
#[derive(Debug, Clone)]
struct Seen {
    headers: http::HeaderMap,
    body: Value,
}

/// An MCP tool behind HTTPS: answers each JSON-RPC request (or batch) with a result naming
/// the tool called, and records what it received.
struct McpTls {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl McpTls {
    async fn start(ca: &TestCa) -> McpTls {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, rec) = (acceptor.clone(), rec.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req| answer(req, rec.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        McpTls { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for McpTls {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn result_for(message: &Value) -> Value {
    json!({"jsonrpc": "2.0", "id": message["id"],
        "result": {"content": [{"type": "text", "text": format!("called {}", message["params"]["name"])}]}})
}

async fn answer(
    req: Request<Incoming>,
    rec: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let message: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    rec.lock().unwrap().push(Seen {
        headers: parts.headers,
        body: message.clone(),
    });
    let reply = match &message {
        Value::Array(items) => Value::Array(items.iter().map(result_for).collect()),
        one => result_for(one),
    };
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.to_string())))
        .unwrap())
}

/// toolgate with its CA (`toolgate ca init`), the crm MCP tool behind HTTPS, and a `kind: jwt`
/// credential for it.
struct Setup {
    tg: Toolgate,
    server: McpTls,
    ca: PathBuf,
    _keep: tempfile::TempDir,
}

async fn setup() -> Setup {
    let tool_ca = TestCa::new();
    let server = McpTls::start(&tool_ca).await;
    let keep = tempfile::tempdir().unwrap();
    let (ca, key) = (keep.path().join("ca.pem"), keep.path().join("ca-key.pem"));
    let out = Command::new(support::binary())
        .args(["ca", "init", "--cert"])
        .arg(&ca)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let signing = Command::new(support::binary())
        .args(["keys", "init"])
        .output()
        .unwrap();
    assert!(signing.status.success(), "{signing:?}");
    let tool_ca_path = keep.path().join("tool-ca.pem");
    std::fs::write(&tool_ca_path, &tool_ca.ca_pem).unwrap();
    let config = format!(
        r#"
agent: {{ id: "{AGENT}" }}
tools:
  - name: crm
    hosts: [crm.test]
    upstream: https://localhost:{port}
    protocol: mcp
    credential: crm-token
policy: {{ files: [policy/*.rego] }}
credentials:
  crm-token: {{ kind: jwt, audience: crm.test, key_file: keys/signing.pem, max_ttl: 60s }}
limits: {{ connect_timeout: 2s, upstream_timeout: 5s, shutdown_timeout: 1s }}
tls:
  upstream_ca: {tool_ca}
  ca: {{ cert: {ca}, key: {key} }}
"#,
        port = server.addr.port(),
        tool_ca = tool_ca_path.display(),
        ca = ca.display(),
        key = key.display(),
    );
    let tg = Toolgate::start(
        &config,
        &[
            ("policy/main.rego", POLICY),
            (
                "keys/signing.pem",
                &String::from_utf8(signing.stdout).unwrap(),
            ),
        ],
    );
    Setup {
        tg,
        server,
        ca,
        _keep: keep,
    }
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}})
}

/// POST each of `bodies` to `https://crm.test/mcp` with Python `requests` through one session
/// (one tunnel), trusting toolgate's CA; each answer's status, content type and JSON body.
fn python_posts(s: &Setup, bodies: &[Value]) -> Vec<Value> {
    let script = r#"
import json, sys, requests
session = requests.Session()
out = []
for body in json.loads(sys.argv[1]):
    r = session.post("https://crm.test/mcp", data=json.dumps(body), timeout=10, headers={
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "authorization": "Bearer agent-own-token",
        "x-toolgate-task": "T-mcp-tls",
    })
    out.append({"status": r.status_code, "type": r.headers.get("content-type"), "body": r.json()})
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &Value::from(bodies.to_vec()).to_string()])
        .env("HTTPS_PROXY", s.tg.proxy_url())
        .env("REQUESTS_CA_BUNDLE", &s.ca)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.tg.logs()
    );
    let results: Value = serde_json::from_str(stdout.trim()).unwrap();
    results.as_array().unwrap().clone()
}

/// The JWT the server received, verified against toolgate's admin JWKS: its claims.
fn verified_claims(s: &Setup, seen: &Seen) -> Value {
    let auth = seen.headers["authorization"].to_str().unwrap();
    let token = auth.strip_prefix("Bearer ").expect("a bearer token");
    let (status, jwks) = support::http_get(s.tg.admin, "/.well-known/jwks.json").unwrap();
    assert_eq!(status, 200, "{jwks}");
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["crm.test"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_tools_call_over_https_is_classified_by_its_body_inside_the_tunnel() {
    let s = setup().await;
    let allowed = call(1, "lookup_customer", json!({"customer": "acme"}));
    let denied = call(2, "delete_customer", json!({"customer": "acme"}));
    let results = python_posts(&s, &[allowed.clone(), denied]);

    assert_eq!(results[0]["status"], 200, "{results:?}");
    assert_eq!(
        results[0]["body"],
        json!({"jsonrpc": "2.0", "id": 1,
            "result": {"content": [{"type": "text", "text": "called \"lookup_customer\""}]}})
    );
    // Denied by what the body says: answered in JSON-RPC, as MCP clients expect.
    assert_eq!(results[1]["status"], 200);
    assert_eq!(results[1]["type"], "application/json");
    let error = &results[1]["body"];
    assert_eq!(error["id"], 2, "{error}");
    assert_eq!(error["error"]["code"], -32001);
    assert_eq!(
        error["error"]["message"],
        "deleting customers needs a human"
    );
    assert_eq!(error["error"]["data"]["action"], "crm.delete_customer");
    assert_eq!(
        s.tg.logs().matches("tunnel opened").count(),
        1,
        "both calls went through one tunnel: {}",
        s.tg.logs()
    );

    let seen = s.server.seen();
    assert_eq!(seen.len(), 1, "the denied call never reaches the server");
    assert_eq!(seen[0].body, allowed);
    assert_eq!(seen[0].headers.get_all("authorization").iter().count(), 1);
    let claims = verified_claims(&s, &seen[0]);
    assert_eq!(claims["scope"], "crm.lookup_customer");
    assert_eq!(claims["sub"], AGENT);
    assert_eq!(claims["task"], "T-mcp-tls");

    // The decision log's own thread writes the lines: wait for each.
    for action in ["crm.lookup_customer", "crm.delete_customer"] {
        let decisions = s.tg.wait_for_stdout(&format!(r#""action":"{action}""#));
        assert!(
            decisions.contains(&format!(r#""action":"{action}""#)),
            "{decisions}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_two_allowed_calls_carries_one_token_scoped_to_both_actions() {
    let s = setup().await;
    let batch = json!([
        call(1, "lookup_customer", json!({"customer": "acme"})),
        call(2, "list_orders", json!({"customer": "acme"})),
    ]);
    let results = python_posts(&s, std::slice::from_ref(&batch));
    assert_eq!(results[0]["status"], 200, "{results:?}");
    let answers = results[0]["body"].as_array().unwrap();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(
        answers.iter().all(|a| a.get("result").is_some()),
        "{answers:?}"
    );

    let seen = s.server.seen();
    assert_eq!(seen.len(), 1, "the batch is forwarded whole, once");
    assert_eq!(seen[0].body, batch);
    let tokens: Vec<_> = seen[0].headers.get_all("authorization").iter().collect();
    assert_eq!(tokens.len(), 1, "exactly one credential: {tokens:?}");
    let claims = verified_claims(&s, &seen[0]);
    let scope: Vec<&str> = claims["scope"].as_str().unwrap().split(' ').collect();
    // Sorted: the order of the members changes nothing about the credential.
    assert_eq!(scope, ["crm.list_orders", "crm.lookup_customer"]);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
}
