//! Human approval bound to the exact request, end to end: the real toolgate binary between a
//! real client (reqwest, as the agent) and a recording tool, the real `toolgate approvals`
//! command as the operator, a real OTLP receiver for spans, PyJWT to verify the minted
//! credential, a recording server as the webhook — and, in `approvals/page.rs`, a real
//! headless Chromium clicking the page. Every refusal is checked from the agent's side with
//! the legitimate path as its positive control.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/otlp.rs"]
mod otlp;
mod support;

#[path = "approvals/page.rs"]
mod page;
#[path = "approvals/properties.rs"]
mod properties;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{binary, http_get, ToolServer, Toolgate, OPERATOR_TOKEN, OPERATOR_TOKEN_FILE};

pub(crate) const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

amount := to_number(input.action.attributes.amount)

# Within the limit: allowed, with a token minted for it.
decision := {"allow": true, "reason": "within the limit", "credential": {"name": "payments", "ttl": "30s"}} if {
	input.action.name == "payment.create"
	amount <= 100
}

# The identical request, after a human approved it.
decision := {"allow": true, "reason": sprintf("approved by %s", [input.approval.approved_by]), "credential": {"name": "payments", "ttl": "30s"}} if {
	input.action.name == "payment.create"
	amount > 100
	input.approval.approved_by
}

decision := {"allow": false, "reason": sprintf("payment of %v needs a human", [amount]), "approval": {"required": true, "approvers": ["group:payments-leads"], "ttl": ttl, "wait": wait}} if {
	input.action.name == "payment.create"
	amount > 100
	not input.approval
}

# Currency XPT: approvals live 2 s (the expiry test); WAIT: the request is held open.
ttl := "2s" if input.action.attributes.currency == "XPT" else := "10m"
wait := "20s" if input.action.attributes.currency == "WAIT" else := "0s"

decision := {"allow": false, "reason": "deleting customers needs a human", "approval": "required"} if {
	input.action.name == "crm.delete_customer"
}

decision := true if input.action.name == "crm.lookup_customer"
"#;

/// toolgate with a payments tool (minted JWTs), an MCP CRM, the operator token, spans to
/// `otlp` and the webhook at `webhook`, both optional.
pub(crate) fn start(tool: &ToolServer, otlp: Option<&str>, webhook: Option<&str>) -> Toolgate {
    let signing = keys_init();
    let telemetry = otlp
        .map(|e| format!("telemetry: {{ otlp: {{ endpoint: \"{e}\", protocol: http }} }}"))
        .unwrap_or_default();
    let hook = webhook
        .map(|url| {
            format!("approvals: {{ webhook: {{ url: \"{url}\", timeout: 2s, retries: 2 }} }}")
        })
        .unwrap_or_default();
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: payments
    hosts: [payments.test]
    upstream: {upstream}
    credential: payments
    actions:
      - name: payment.create
        match: {{ method: POST, path: /v1/payments }}
        attributes: {{ amount: "query:amount", currency: "query:currency" }}
  - name: crm
    hosts: [crm.test]
    upstream: {upstream}
    protocol: mcp
policy: {{ files: [policy/*.rego] }}
credentials:
  payments: {{ kind: jwt, audience: payments.test, key_file: keys/signing.pem, issuer: toolgate-test, max_ttl: 60s }}
admin: {{ token_file: operator-token }}
state: {{ dir: state }}
limits: {{ connect_timeout: 2s, upstream_timeout: 30s, shutdown_timeout: 1s }}
{telemetry}
{hook}
"#,
        upstream = tool.url(),
    );
    Toolgate::start_with_env(
        &config,
        &[
            ("policy/main.rego", POLICY),
            ("keys/signing.pem", &signing),
            ("state/.keep", ""),
            OPERATOR_TOKEN_FILE,
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    )
}

fn keys_init() -> String {
    let out = Command::new(binary())
        .args(["keys", "init"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The agent pays `amount` in `currency` in task `task`.
pub(crate) async fn pay(tg: &Toolgate, task: &str, amount: u32, currency: &str) -> (u16, Value) {
    let resp = tg
        .forward_client()
        .post(format!(
            "http://payments.test/v1/payments?amount={amount}&currency={currency}"
        ))
        .header("x-toolgate-task", task)
        .header("authorization", "Bearer the-agents-own-token")
        .header("content-type", "application/json")
        .body(r#"{"memo":"invoice 7"}"#)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `toolgate approvals -c <tg's config> ARGS`: exit code, stdout, stderr.
pub(crate) fn approvals_cli(tg: &Toolgate, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .arg("approvals")
        .arg("-c")
        .arg(tg.dir.path().join("toolgate.yaml"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kind(problem: &Value) -> &str {
    problem["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("urn:toolgate:problem:")
}

fn metric(tg: &Toolgate, line_start: &str) -> u64 {
    let (_, text) = http_get(tg.admin, "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Verify `token` with PyJWT against toolgate's JWKS for `audience`; its claims.
fn verify_with_pyjwt(tg: &Toolgate, audience: &str, token: &str) -> Value {
    let (status, jwks) = http_get(tg.admin, "/.well-known/jwks.json").unwrap();
    assert_eq!(status, 200);
    let jwks: Value = serde_json::from_str(&jwks).unwrap();
    let mut verified = support::verify_independently(&jwks, audience, &[token.to_string()]);
    verified.remove(0).1
}

/// The decision-log lines so far.
fn decisions(tg: &Toolgate) -> Vec<Value> {
    tg.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Wait (up to 10 s) until `done` holds.
pub(crate) fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_payment_goes_out_once_after_a_human_approves_it_with_the_approver_on_record() {
    let tool = ToolServer::http().await;
    let receiver = otlp::Receiver::http().await;
    let webhook = ToolServer::http().await;
    let tg = start(
        &tool,
        Some(&receiver.endpoint()),
        Some(&format!("{}/hooks/approvals", webhook.url())),
    );

    // Over the limit: held, with where a human approves it.
    let (status, held) = pay(&tg, "T-1", 500, "EUR").await;
    assert_eq!(status, 403, "{held}");
    assert_eq!(kind(&held), "approval-required", "{held}");
    let id = held["approval_id"].as_str().unwrap().to_string();
    assert_eq!(held["approval_status"], "pending");
    assert_eq!(
        held["approve_url"],
        format!("http://{}/approvals#{id}", tg.admin)
    );
    assert!(
        held["expires_at"].as_str().unwrap().ends_with('Z'),
        "{held}"
    );
    assert!(
        held["detail"]
            .as_str()
            .unwrap()
            .starts_with("payment of 500 needs a human"),
        "{held}"
    );
    assert!(
        tool.received().is_empty(),
        "a held request reached the tool"
    );
    // Asked again before anyone decided: the same approval.
    let (status, again) = pay(&tg, "T-1", 500, "EUR").await;
    assert_eq!((status, &again["approval_id"]), (403, &json!(id)));

    // The agent, on the same loopback, cannot approve its own request.
    let path = format!("/v1/approvals/{id}/approve");
    let body = br#"{"approver": "the agent"}"#;
    let no_token = support::request(
        tg.admin,
        "POST",
        &path,
        &[("Content-Type", "application/json")],
        body,
    );
    let wrong = support::request(
        tg.admin,
        "POST",
        &path,
        &[
            (
                "Authorization",
                "Bearer not-the-operator-token-0123456789abcdef",
            ),
            ("Content-Type", "application/json"),
        ],
        body,
    );
    for answer in [&no_token, &wrong] {
        assert_eq!(answer.status, 401, "{answer:?}");
        assert_eq!(kind(&answer.json()), "operator-unauthorized");
    }
    // Nor through the proxy listener, as a route or an absolute URL to the admin listener.
    let via_proxy = tg
        .forward_client()
        .post(format!("http://{}{path}", tg.admin))
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(via_proxy.status(), 403);
    assert_eq!(pay(&tg, "T-1", 500, "EUR").await.0, 403, "still held");

    // The operator (positive control): listed by the CLI, approved by the CLI.
    let (code, out, err) = approvals_cli(&tg, &["list"]);
    assert_eq!(code, 0, "{out}{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let first = &listed["approvals"][0];
    assert_eq!(first["id"], json!(id));
    assert_eq!(first["action"], "payment.create");
    assert_eq!(
        first["attributes"],
        json!({"amount": "500", "currency": "EUR"})
    );
    assert_eq!(first["request"]["query"], "amount=500&currency=EUR");
    assert_eq!(first["request"]["body"]["text"], r#"{"memo":"invoice 7"}"#);
    assert!(
        first["request"]["headers"].get("authorization").is_none(),
        "{first}"
    );
    assert!(!out.contains("the-agents-own-token"), "{out}");
    let (code, out, err) = approvals_cli(
        &tg,
        &[
            "approve",
            &id,
            "--approver",
            "alice@example.com",
            "--comment",
            "invoice checked",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let approved: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(approved["approval"]["status"], "approved");

    // Another amount, another request: not approved by this.
    let (status, other) = pay(&tg, "T-1", 501, "EUR").await;
    assert_eq!(
        (status, kind(&other)),
        (403, "approval-required"),
        "{other}"
    );
    assert_ne!(other["approval_id"], json!(id));
    // Another task either.
    let (status, other_task) = pay(&tg, "T-2", 500, "EUR").await;
    assert_eq!((status, kind(&other_task)), (403, "approval-required"));
    assert!(tool.received().is_empty());

    // The identical request goes out, once, on a token that names the approval.
    let (status, ok) = pay(&tg, "T-1", 500, "EUR").await;
    assert_eq!(status, 200, "{ok}");
    let got = tool.only();
    assert_eq!(got.target, "/v1/payments?amount=500&currency=EUR");
    assert_eq!(&got.body[..], br#"{"memo":"invoice 7"}"#);
    let bearer = got.headers["authorization"].to_str().unwrap();
    let token = bearer.strip_prefix("Bearer ").unwrap();
    assert_ne!(token, "the-agents-own-token");
    let claims = verify_with_pyjwt(&tg, "payments.test", token);
    assert_eq!(claims["approval"], json!(id));
    assert_eq!(claims["task"], "T-1");
    assert_eq!(claims["scope"], "payment.create");

    // Used: the next identical request asks a human again, under a new id.
    let (status, next) = pay(&tg, "T-1", 500, "EUR").await;
    assert_eq!((status, kind(&next)), (403, "approval-required"), "{next}");
    assert_ne!(next["approval_id"], json!(id));
    assert_eq!(tool.received().len(), 1);

    // The record: the span and the decision-log line of the approved request.
    let spans = receiver.wait_for(7).await;
    let approved_span = spans
        .iter()
        .find(|s| otlp::string(&s.span.attributes, "toolgate.approval.status") == Some("consumed"))
        .expect("a span for the approved request");
    let a = &approved_span.span.attributes;
    assert_eq!(otlp::string(a, "toolgate.approval.id"), Some(id.as_str()));
    assert_eq!(
        otlp::string(a, "toolgate.approval.approver"),
        Some("alice@example.com")
    );
    assert_eq!(otlp::string(a, "toolgate.decision"), Some("allow"));
    let held_span = spans
        .iter()
        .find(|s| otlp::string(&s.span.attributes, "toolgate.approval.status") == Some("pending"))
        .unwrap();
    assert_eq!(
        otlp::string(&held_span.span.attributes, "toolgate.decision"),
        Some("deny")
    );
    eventually("the decision log", || {
        decisions(&tg)
            .iter()
            .any(|l| l["approval"]["status"] == "consumed")
    });
    let lines = decisions(&tg);
    let line = lines
        .iter()
        .find(|l| l["approval"]["status"] == "consumed")
        .unwrap();
    assert_eq!(line["approval"]["id"], json!(id));
    assert_eq!(line["approval"]["decided_by"], "alice@example.com");
    assert_eq!(line["result"]["allow"], true);
    assert!(line["credential"]["id"].is_string(), "{line}");

    // The webhook heard of the request and of the decision (and of the use), never a
    // credential.
    eventually("webhook deliveries", || webhook.received().len() >= 3);
    let events: Vec<Value> = webhook
        .received()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let requested = events
        .iter()
        .find(|e| e["event"] == "requested" && e["id"] == json!(id))
        .unwrap();
    assert!(requested["text"]
        .as_str()
        .unwrap()
        .contains(&format!("http://{}/approvals#{id}", tg.admin)));
    assert_eq!(requested["action"], "payment.create");
    assert_eq!(requested["attributes"]["amount"], "500");
    assert_eq!(requested["agent"], "spiffe://test/ns/a/sa/agent");
    assert_eq!(requested["request"]["method"], "POST");
    let decided = events.iter().find(|e| e["event"] == "approved").unwrap();
    assert_eq!(decided["decided_by"], "alice@example.com");
    assert!(decided["text"]
        .as_str()
        .unwrap()
        .contains("approved by alice@example.com"));
    assert_eq!(webhook.received()[0].target, "/hooks/approvals");
    for r in webhook.received() {
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            !text.contains("the-agents-own-token") && !text.contains(token),
            "{text}"
        );
    }

    // Counted.
    assert_eq!(
        metric(&tg, "toolgate_approvals_total{event=\"approved\"}"),
        1
    );
    assert_eq!(
        metric(&tg, "toolgate_approvals_total{event=\"consumed\"}"),
        1
    );
    assert_eq!(
        metric(&tg, "toolgate_approvals_total{event=\"requested\"}"),
        4
    );
    assert_eq!(metric(&tg, "toolgate_approval_decision_seconds_count"), 1);
    eventually("webhook counts", || {
        metric(
            &tg,
            "toolgate_approval_webhooks_total{result=\"delivered\"}",
        ) >= 3
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denial_refuses_with_the_approvers_comment_and_an_expired_approval_refuses() {
    let tool = ToolServer::http().await;
    // The webhook is down: nothing is approved by its failure, and it is counted.
    let down = support::closed_port();
    let tg = start(
        &tool,
        None,
        Some(&format!("http://127.0.0.1:{}/down", down.port)),
    );

    let (_, held) = pay(&tg, "T-deny", 700, "EUR").await;
    let id = held["approval_id"].as_str().unwrap().to_string();
    let (code, out, err) = approvals_cli(
        &tg,
        &[
            "deny",
            &id,
            "--approver",
            "bob",
            "--comment",
            "not this vendor",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (status, denied) = pay(&tg, "T-deny", 700, "EUR").await;
    assert_eq!(
        (status, kind(&denied)),
        (403, "approval-denied"),
        "{denied}"
    );
    assert_eq!(denied["approval_id"], json!(id));
    assert_eq!(denied["comment"], "not this vendor");
    assert_eq!(denied["decided_by"], "bob");
    assert!(
        denied["detail"]
            .as_str()
            .unwrap()
            .contains("denied by bob (not this vendor)"),
        "{denied}"
    );
    // A denial is final: approving it afterwards is refused.
    let (code, _, err) = approvals_cli(&tg, &["approve", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("409 approval not pending"), "{err}");
    assert_eq!(pay(&tg, "T-deny", 700, "EUR").await.0, 403);

    // Approved, but the retry comes after the approval's 2 s lifetime.
    let (_, held) = pay(&tg, "T-late", 700, "XPT").await;
    let late = held["approval_id"].as_str().unwrap().to_string();
    let (code, _, _) = approvals_cli(&tg, &["approve", &late, "--approver", "alice"]);
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_millis(2100));
    let (status, expired) = pay(&tg, "T-late", 700, "XPT").await;
    assert_eq!(
        (status, kind(&expired)),
        (403, "approval-expired"),
        "{expired}"
    );
    assert_eq!(expired["approval_id"], json!(late));
    let (code, out, _) = approvals_cli(&tg, &["show", &late]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["status"],
        "expired"
    );
    assert!(tool.received().is_empty(), "nothing reached the tool");
    assert_eq!(
        metric(&tg, "toolgate_approvals_total{event=\"expired\"}"),
        1
    );
    assert_eq!(metric(&tg, "toolgate_approvals_total{event=\"denied\"}"), 1);
    eventually("the failed webhook", || {
        metric(&tg, "toolgate_approval_webhooks_total{result=\"failed\"}") >= 1
    });

    // Positive control: within the limit, no human needed.
    assert_eq!(pay(&tg, "T-deny", 50, "EUR").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_tools_call_needing_approval_gets_a_json_rpc_error_carrying_the_approval_id() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, None, None);
    let call = |id: u64, name: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": {"customer": "ACME"}}})
    };
    let post = |body: Value| {
        tg.forward_client()
            .post("http://crm.test/mcp")
            .header("content-type", "application/json")
            .header("x-toolgate-task", "T-mcp")
            .body(body.to_string())
            .send()
    };
    let resp = post(call(7, "delete_customer")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["id"], 7);
    assert_eq!(answer["error"]["code"], -32001);
    assert_eq!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .split(':')
            .next(),
        Some("deleting customers needs a human")
    );
    let data = &answer["error"]["data"];
    let id = data["approval_id"].as_str().unwrap().to_string();
    assert_eq!(data["approval_status"], "pending");
    assert_eq!(data["action"], "crm.delete_customer");
    assert!(data["approve_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("#{id}")));
    assert!(data["expires_at"].is_string());
    // The client's next call has a new JSON-RPC id: still the same request, same approval.
    let again: Value = post(call(8, "delete_customer"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["error"]["data"]["approval_id"], json!(id));
    assert!(tool.received().is_empty());
    // Approved through the API with the token: the call goes out once.
    let approved = support::operator(
        tg.admin,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(r#"{"approver": "carol"}"#),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    let resp = post(call(9, "delete_customer")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"ok": true}));
    assert_eq!(tool.received().len(), 1);
    // A batch member needing approval refuses the batch: approvals bind one request.
    let batch = json!([call(10, "lookup_customer"), call(11, "delete_customer")]);
    let answer: Value = post(batch).await.unwrap().json().await.unwrap();
    assert!(
        answer[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be sent on its own"),
        "{answer}"
    );
    assert_eq!(tool.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_waits_goes_out_as_soon_as_a_human_approves_it() {
    let tool = ToolServer::http().await;
    let tg = std::sync::Arc::new(start(&tool, None, None));
    let agent = {
        let tg = tg.clone();
        tokio::spawn(async move { pay(&tg, "T-wait", 900, "WAIT").await })
    };
    // The operator sees it while the agent's request is held open, and approves it.
    let mut id = String::new();
    eventually("the held request to be listed", || {
        let listed = support::operator_json(tg.admin, "/v1/approvals");
        match listed["approvals"][0]["id"].as_str() {
            Some(found) => {
                id = found.to_string();
                true
            }
            None => false,
        }
    });
    assert!(!agent.is_finished(), "the request should be held open");
    let approved = support::operator(
        tg.admin,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(r#"{"approver": "dave"}"#),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    let (status, body) = agent.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(tool.only().target, "/v1/payments?amount=900&currency=WAIT");
    let shown = support::operator_json(tg.admin, &format!("/v1/approvals/{id}"));
    assert_eq!(shown["status"], "consumed");
    // Its chain: the held decision, then the approved one.
    let chain = shown["chain"].as_array().unwrap();
    let last: Vec<(&str, &str)> = chain
        .iter()
        .map(|e| {
            (
                e["decision"].as_str().unwrap(),
                e["outcome"].as_str().unwrap_or("pending"),
            )
        })
        .collect();
    assert_eq!(
        last,
        [("deny", "refused"), ("allow", "response")],
        "{chain:?}"
    );
}

#[test]
fn the_approvals_command_needs_a_reachable_operator_api() {
    let dir = tempfile::tempdir().unwrap();
    support::write(dir.path(), "policy/main.rego", POLICY);
    support::write(
        dir.path(),
        "toolgate.yaml",
        "agent: { id: a }\npolicy: { files: [policy/*.rego] }\n",
    );
    let run = |config: &Path, args: &[&str]| {
        let out = Command::new(binary())
            .arg("approvals")
            .arg("-c")
            .arg(config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&dir.path().join("toolgate.yaml"), &["list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the operator API is off"), "{err}");
    let (code, _) = run(&dir.path().join("missing.yaml"), &["list"]);
    assert_eq!(code, 2);
    // Configured, but nothing listening: exit 1.
    let closed = support::closed_port();
    support::write(dir.path(), OPERATOR_TOKEN_FILE.0, OPERATOR_TOKEN);
    support::write(
        dir.path(),
        "toolgate.yaml",
        &format!(
            "listen: {{ admin: \"127.0.0.1:{}\" }}\nagent: {{ id: a }}\npolicy: {{ files: [policy/*.rego] }}\nadmin: {{ token_file: operator-token }}\n",
            closed.port
        ),
    );
    let (code, err) = run(&dir.path().join("toolgate.yaml"), &["approve", "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the operator API"), "{err}");
}
