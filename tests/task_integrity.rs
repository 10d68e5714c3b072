//! The task and its chain, held against the agent (issue 13, points 3–5). Every test is the
//! agent's attempt, from the same loopback as toolgate, with a positive control: the
//! legitimate request still reaches the tool, byte for byte.
//!
//! - A chain entry is final on every path: a read still in flight, or one the agent hung up
//!   on before the tool answered, never counts as a successful read.
//! - Tasks the agent cannot escape: `chain.require_task_token`; sticky labels that survive
//!   switching task and long chains; verified tasks the agent cannot flush; a task that began
//!   before this process says its history is incomplete.
//! - Batch credentials that do not depend on order, and dry-run batches that inject nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};
use support::{ToolServer, Toolgate};
use toolgate_policy::config::{generate_ed25519_pem, SigningKey};

/// A tool that answers every request after `delay` (and records the request line it got).
struct SlowTool {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl SlowTool {
    fn start(delay: Duration) -> SlowTool {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let rec = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let rec = rec.clone();
                std::thread::spawn(move || {
                    // One request per connection: enough for these tests.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    rec.lock()
                        .unwrap()
                        .push(text.lines().next().unwrap_or_default().to_string());
                    std::thread::sleep(delay);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}",
                    );
                });
            }
        });
        SlowTool { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

const JIRA_POLICY: &str = r#"
package toolgate
import data.toolgate.lib
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this"}

decision := {"allow": true, "reason": "reading is allowed"} if input.action.name == "ticket.read"

decision := {"allow": true, "reason": "read first"} if {
	input.action.name == "ticket.transition"
	lib.done_in_task("ticket.read", {"issue": input.action.attributes.issue})
}

decision := {"allow": false, "reason": "read it successfully in this task first"} if {
	input.action.name == "ticket.transition"
	not lib.done_in_task("ticket.read", {"issue": input.action.attributes.issue})
}
"#;

fn jira(upstream: &str, extra: &str) -> String {
    format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {upstream}
    credential: jira-token
    actions:
      - {{ name: ticket.read, match: {{ method: GET, path: "/issue/{{issue}}" }}, attributes: {{ issue: "path:issue" }} }}
      - {{ name: ticket.transition, match: {{ method: POST, path: "/issue/{{issue}}/transitions" }}, attributes: {{ issue: "path:issue" }} }}
policy: {{ files: [policy.rego] }}
credentials:
  jira-token: {{ kind: secret, file: secrets/jira, header: Authorization, format: "Bearer {{}}" }}
limits: {{ connect_timeout: 2s, upstream_timeout: 10s, shutdown_timeout: 1s }}
{extra}
"#
    )
}

/// Send `request` through the proxy and hang up after `after`, without reading the answer.
fn send_and_hang_up(proxy: SocketAddr, request: &str, after: Duration) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    std::thread::sleep(after);
    drop(s);
}

/// The decision-log lines written so far.
fn decisions(tg: &Toolgate) -> Vec<Value> {
    tg.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("decision_id").is_some())
        .collect()
}

/// Wait (up to 10 s) until a decision-log line satisfies `pred`.
fn wait_for_decision(tg: &Toolgate, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = decisions(tg).into_iter().find(|l| pred(l)) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no such decision-log line in:\n{}",
            tg.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(task: &str, issue: &str) -> String {
    format!("GET http://jira.test/issue/{issue} HTTP/1.1\r\nHost: jira.test\r\nx-toolgate-task: {task}\r\n\r\n")
}

#[tokio::test]
async fn a_read_the_agent_hung_up_on_or_still_in_flight_does_not_count() {
    let tool = SlowTool::start(Duration::from_millis(1500));
    let upstream = format!("http://{}", tool.addr);
    let tg = Toolgate::start(
        &jira(&upstream, ""),
        &[("policy.rego", JIRA_POLICY), ("secrets/jira", "s3cret")],
    );
    let client = tg.forward_client();
    let transition = |task: &'static str| {
        client
            .post("http://jira.test/issue/SUP-1/transitions")
            .header("x-toolgate-task", task)
            .body("{}")
            .send()
    };

    // The attack: read, hang up before the tool answers, then change the ticket.
    send_and_hang_up(
        tg.proxy,
        &get("T-abandon", "SUP-1"),
        Duration::from_millis(200),
    );
    let abandoned = wait_for_decision(&tg, |l| l["task"] == "T-abandon");
    assert_eq!(
        abandoned["outcome"]["outcome"], "agent_disconnected",
        "{abandoned}"
    );
    assert_eq!(abandoned["outcome"].get("status"), None);
    let (status, body) = support::problem(transition("T-abandon").await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["detail"], "read it successfully in this task first");

    // The attack: change the ticket while the read is still in flight.
    let proxy = tg.proxy;
    let in_flight = std::thread::spawn(move || support::raw(proxy, &get("T-flight", "SUP-1")));
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = support::problem(transition("T-flight").await.unwrap()).await;
    assert_eq!(status, 403, "a read in flight is pending, not a success");

    // The positive control: once the read has been answered, the same transition passes.
    let answered = in_flight.join().unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let allowed = transition("T-flight").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.text().await.unwrap(), "{\"ok\":true}");
    let transitions = tool
        .seen()
        .into_iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert_eq!(
        transitions, 1,
        "only the allowed transition reached the tool"
    );

    // One decision-log line per decision, each with its outcome.
    let lines = wait_for_decision(&tg, |l| {
        l["task"] == "T-flight"
            && l["action"] == "ticket.transition"
            && l["result"]["allow"] == true
    });
    assert_eq!(
        lines["outcome"],
        json!({"outcome": "response", "status": 200})
    );
    let refused = decisions(&tg)
        .into_iter()
        .find(|l| l["task"] == "T-abandon" && l["action"] == "ticket.transition")
        .unwrap();
    assert_eq!(
        refused["outcome"],
        json!({"outcome": "refused", "status": 403})
    );
}

fn orchestrator() -> SigningKey {
    SigningKey::from_pem(
        generate_ed25519_pem().unwrap().as_bytes(),
        jsonwebtoken::Algorithm::EdDSA,
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn task_token(key: &SigningKey, task: &str, iat: u64) -> String {
    let claims = json!({
        "iss": "https://orchestrator.test", "aud": "toolgate", "task": task,
        "iat": iat, "exp": now() + 600,
    });
    jsonwebtoken::encode(key.header(), &claims, key.encoding_key()).unwrap()
}

const TOKEN_POLICY: &str = r#"
package toolgate
import data.toolgate.lib
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this"}

decision := {"allow": true} if input.action.name == "ticket.read"

decision := {"allow": false, "reason": "this task's history is incomplete"} if {
	input.action.name == "ticket.transition"
	not lib.history_complete
} else := {"allow": true} if {
	input.action.name == "ticket.transition"
	lib.done_in_task("ticket.read", {"issue": input.action.attributes.issue})
}
"#;

fn token_world(tool: &ToolServer, extra: &str, key: &SigningKey) -> Toolgate {
    let config = jira(
        &tool.url(),
        &format!(
            "task_tokens: {{ issuers: [{{ issuer: \"https://orchestrator.test\", jwks_file: orchestrator.json, audience: toolgate }}] }}\n{extra}"
        ),
    );
    let jwks = json!({ "keys": [key.jwk().clone()] }).to_string();
    Toolgate::start(
        &config,
        &[
            ("policy.rego", TOKEN_POLICY),
            ("secrets/jira", "s3cret"),
            ("orchestrator.json", &jwks),
        ],
    )
}

#[tokio::test]
async fn with_require_task_token_only_the_orchestrator_starts_tasks() {
    let tool = ToolServer::http().await;
    let key = orchestrator();
    let tg = token_world(&tool, "chain: { require_task_token: true }", &key);
    let client = tg.forward_client();

    // The attack: name a task of its own choosing, or none at all.
    for headers in [vec![("x-toolgate-task", "T-mine")], vec![]] {
        let mut req = client.get("http://jira.test/issue/SUP-1");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let (status, body) = support::problem(req.send().await.unwrap()).await;
        assert_eq!(status, 403);
        assert_eq!(body["type"], "urn:toolgate:problem:task-required", "{body}");
    }
    assert!(tool.received().is_empty(), "the tool saw nothing");

    // The positive control: the orchestrator's token.
    let resp = client
        .get("http://jira.test/issue/SUP-1")
        .header("x-toolgate-task-token", task_token(&key, "T-orch", now()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = tool.only();
    assert_eq!(got.target, "/issue/SUP-1");
    assert_eq!(got.headers["authorization"], "Bearer s3cret");
}

#[tokio::test]
async fn the_agent_cannot_flush_a_verified_task_or_hide_that_a_task_began_before_restart() {
    let tool = ToolServer::http().await;
    let key = orchestrator();
    let tg = token_world(&tool, "chain: { max_tasks: 16 }", &key);
    let client = tg.forward_client();
    let token = task_token(&key, "T-orch", now());
    let with_token = |req: reqwest::RequestBuilder, token: &str| {
        req.header("x-toolgate-task-token", token.to_string())
    };
    let read = with_token(client.get("http://jira.test/issue/SUP-1"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    // The attack: name ten times the task capacity, among them the verified task's own id.
    for i in 0..160 {
        let resp = client
            .get("http://jira.test/issue/SUP-2")
            .header(
                "x-toolgate-task",
                if i == 0 {
                    "T-orch".to_string()
                } else {
                    format!("flood-{i}")
                },
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    // The positive control: the orchestrated task's read still counts.
    let transition = with_token(
        client.post("http://jira.test/issue/SUP-1/transitions"),
        &token,
    )
    .body("{}")
    .send()
    .await
    .unwrap();
    assert_eq!(transition.status(), 200);

    // A task whose token says it began long before this process: its history here is not the
    // whole history, and a rule that needs it fails closed.
    let old = task_token(&key, "T-old", now() - 7200);
    let read = with_token(client.get("http://jira.test/issue/SUP-3"), &old)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let (status, body) = support::problem(
        with_token(
            client.post("http://jira.test/issue/SUP-3/transitions"),
            &old,
        )
        .body("{}")
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["detail"], "this task's history is incomplete");
    let posts: Vec<_> = tool
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.target)
        .collect();
    assert_eq!(posts, ["/issue/SUP-1/transitions"]);
}

const PII_POLICY: &str = r#"
package toolgate
import data.toolgate.lib
import rego.v1

default decision := {"allow": true, "reason": "allowed"}

decision := {"allow": false, "reason": "no export after customer PII was read"} if {
	input.action.name == "data.export"
	lib.labelled("pii")
}
"#;

#[tokio::test]
async fn labels_hold_across_task_switching_and_long_chains() {
    let tool = ToolServer::http().await;
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: crm
    hosts: [crm.test]
    upstream: {upstream}
    actions:
      - {{ name: customer.read, match: {{ method: GET, path: "/customers/{{id}}" }}, labels: [pii] }}
      - {{ name: status.read, match: {{ method: GET, path: /status }} }}
      - {{ name: data.export, match: {{ method: POST, path: /exports }} }}
policy: {{ files: [policy.rego] }}
chain: {{ max_actions: 4 }}
"#,
        upstream = tool.url()
    );
    let tg = Toolgate::start(&config, &[("policy.rego", PII_POLICY)]);
    let client = tg.forward_client();
    let export = |task: &str| {
        client
            .post("http://crm.test/exports")
            .header("x-toolgate-task", task.to_string())
            .body("all customers")
            .send()
    };

    // The positive control: before any PII was read, an export goes through, byte for byte.
    let ok = export("T-0").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(tool.only().body, "all customers");

    let read = client
        .get("http://crm.test/customers/ACME")
        .header("x-toolgate-task", "T-1")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let (status, _) = support::problem(export("T-1").await.unwrap()).await;
    assert_eq!(status, 403);

    // The attacks: many harmless calls (the window holds 4), a new task, a fresh trace.
    for _ in 0..10 {
        let resp = client
            .get("http://crm.test/status")
            .header("x-toolgate-task", "T-1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let (status, body) = support::problem(export("T-1").await.unwrap()).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("no export after customer PII was read"))
    );
    let (status, _) = support::problem(export("T-2-fresh").await.unwrap()).await;
    assert_eq!(status, 403, "a new task does not shed the agent's label");
    let traced = client
        .post("http://crm.test/exports")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body("all customers")
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 403);

    let exports = tool
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(
        exports, 1,
        "only the export before the PII read reached the tool"
    );
    // The decision log says which decision set the label.
    let labelled = wait_for_decision(&tg, |l| l["action"] == "customer.read");
    assert_eq!(labelled["labels"], json!(["pii"]));
}

const BATCH_POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": true, "reason": "allowed"}

decision := {"allow": false, "reason": "deleting needs a human"} if input.action.name == "crm.delete"

decision := {"allow": true, "credential": {"name": "other-key"}} if input.action.name == "crm.elsewhere"

decision := {"allow": true, "credential": {"name": "crm-jwt", "ttl": "10s", "scopes": ["x", "y"]}} if input.action.name == "crm.short"

decision := {"allow": true, "credential": {"name": "crm-jwt", "ttl": "50s", "scopes": ["y", "z"]}} if input.action.name == "crm.long"
"#;

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
}

fn batch_world(tool: &ToolServer, mode: &str) -> Toolgate {
    let signing = {
        let out = std::process::Command::new(support::binary())
            .args(["keys", "init"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: crm
    hosts: [crm.test]
    upstream: {upstream}
    protocol: mcp
    credential: crm-key
policy: {{ files: [policy.rego], mode: {mode} }}
credentials:
  crm-key: {{ kind: secret, file: secrets/crm, header: Authorization, format: "Bearer {{}}" }}
  other-key: {{ kind: secret, file: secrets/other, header: Authorization, format: "Bearer {{}}" }}
  crm-jwt: {{ kind: jwt, audience: crm.test, key_file: keys/signing.pem, max_ttl: 60s }}
"#,
        upstream = tool.url()
    );
    Toolgate::start(
        &config,
        &[
            ("policy.rego", BATCH_POLICY),
            ("secrets/crm", "crm-secret"),
            ("secrets/other", "other-secret"),
            ("keys/signing.pem", &signing),
        ],
    )
}

async fn post_batch(tg: &Toolgate, batch: &Value, auth: Option<&str>) -> reqwest::Response {
    let mut req = tg
        .forward_client()
        .post("http://crm.test/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(batch.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_dry_run_batch_with_a_would_deny_member_carries_no_injected_credential() {
    let tool = ToolServer::http().await;
    let tg = batch_world(&tool, "dry-run");

    // The attack: hide a would-deny member in a batch with an allowed one.
    let resp = post_batch(
        &tg,
        &json!([call(1, "lookup"), call(2, "delete")]),
        Some("Bearer agent-own"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let got = tool.only();
    assert_eq!(
        got.headers["authorization"], "Bearer agent-own",
        "forwarded as it came, as a single would-deny is: nothing injected"
    );

    // The positive control: an all-allowed batch in dry-run gets the credential.
    let resp = post_batch(&tg, &json!([call(3, "lookup"), call(4, "lookup")]), None).await;
    assert_eq!(resp.status(), 200);
    let received = tool.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].headers["authorization"], "Bearer crm-secret");
}

#[tokio::test]
async fn a_batch_whose_members_get_different_credentials_is_refused_whole() {
    let tool = ToolServer::http().await;
    let tg = batch_world(&tool, "enforce");

    let resp = post_batch(&tg, &json!([call(1, "lookup"), call(2, "elsewhere")]), None).await;
    assert_eq!(resp.status(), 200);
    let answers: Value = resp.json().await.unwrap();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 2);
    for (answer, id) in answers.iter().zip([1, 2]) {
        assert_eq!(answer["id"], id);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("different credentials (crm-key, other-key)"),
            "{message}"
        );
    }
    assert!(tool.received().is_empty(), "nothing was forwarded");

    // The positive control: members that agree are forwarded with their credential.
    let resp = post_batch(&tg, &json!([call(3, "lookup"), call(4, "other")]), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(tool.only().headers["authorization"], "Bearer crm-secret");
}

fn claims(authorization: &str) -> Value {
    let token = authorization.strip_prefix("Bearer ").unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_batch_credential_does_not_depend_on_the_order_of_its_members() {
    let tool = ToolServer::http().await;
    let tg = batch_world(&tool, "enforce");
    for batch in [
        json!([call(1, "short"), call(2, "long")]),
        json!([call(3, "long"), call(4, "short")]),
    ] {
        let resp = post_batch(&tg, &batch, None).await;
        assert_eq!(resp.status(), 200);
    }
    let received = tool.received();
    assert_eq!(received.len(), 2);
    let tokens: Vec<Value> = received
        .iter()
        .map(|r| claims(r.headers["authorization"].to_str().unwrap()))
        .collect();
    for c in &tokens {
        let lifetime = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
        assert_eq!(lifetime, 10, "the shortest member's ttl: {c}");
        assert_eq!(
            c["scope"], "crm.long crm.short y",
            "the actions and the common scopes: {c}"
        );
    }
}

#[tokio::test]
async fn a_tool_that_fails_or_times_out_settles_its_entry_so_and_it_never_counts_as_a_read() {
    // A port nothing listens on, and a tool slower than limits.upstream_timeout (1 s).
    let closed_port = support::closed_port();
    let closed = closed_port.port;
    let slow = SlowTool::start(Duration::from_millis(3000));
    let fast = ToolServer::http().await;
    let config = |upstream: &str| {
        jira(upstream, "").replace(
            "limits: { connect_timeout: 2s, upstream_timeout: 10s, shutdown_timeout: 1s }",
            "limits: { connect_timeout: 1s, upstream_timeout: 1s, shutdown_timeout: 1s }",
        )
    };
    for (upstream, want, status) in [
        (format!("http://127.0.0.1:{closed}"), "upstream_error", 502),
        (format!("http://{}", slow.addr), "timeout", 504),
        // The positive control: a tool that answers.
        (fast.url(), "response", 200),
    ] {
        let tg = Toolgate::start(
            &config(&upstream),
            &[("policy.rego", JIRA_POLICY), ("secrets/jira", "s3cret")],
        );
        let client = tg.forward_client();
        let read = client
            .get("http://jira.test/issue/SUP-5")
            .header("x-toolgate-task", "T-fail")
            .send()
            .await
            .unwrap();
        assert_eq!(read.status().as_u16(), status, "{upstream}");
        let line = wait_for_decision(&tg, |l| l["action"] == "ticket.read");
        assert_eq!(line["outcome"]["outcome"], want, "{line}");
        let transition = client
            .post("http://jira.test/issue/SUP-5/transitions")
            .header("x-toolgate-task", "T-fail")
            .body("{}")
            .send()
            .await
            .unwrap();
        let allowed = want == "response";
        assert_eq!(
            transition.status().as_u16() == 403,
            !allowed,
            "{want}: a read that did not succeed never counts"
        );
    }
}
