//! Telemetry end to end: the real toolgate binary exporting to a real OTLP receiver (HTTP and
//! gRPC), one trace per task with a linked span per action under the task's root span, the
//! GenAI and MCP semantic-convention attributes, W3C propagation to the tool, and metrics, also
//! when the collector is down.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/otlp.rs"]
mod otlp;
mod support;

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use otlp::{int, string, Receiver};
use support::{http_get, problem, ToolServer, Toolgate};

const JIRA_SECRET: &str = "jira-secret-value-7f3a";
const PAYMENTS_SECRET: &str = "payments-secret-value-91c2";
const AGENT: &str = "spiffe://test/ns/a/sa/agent";

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read"

decision := {"allow": true, "reason": concat("", [input.action.attributes.issue, " was read earlier in this task"])} if {
	input.action.name == "ticket.transition"
	some entry in input.chain
	entry.action == "ticket.read"
	entry.attributes.issue == input.action.attributes.issue
}

decision := {"allow": true, "reason": "ledger entries are allowed"} if input.action.name == "entry.create"

decision := {"allow": true, "reason": "looking customers up is allowed"} if input.action.name == "crm.lookup_customer"

decision := {"allow": false, "reason": sprintf("payment of %v exceeds the limit of 100", [input.action.attributes.amount])} if {
	input.action.name == "payment.create"
	to_number(input.action.attributes.amount) > 100
}
"#;

fn config(tool: &str, telemetry: &str) -> String {
    format!(
        r#"
agent: {{ id: "{AGENT}" }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {tool}
    credential: jira-token
    actions:
      - name: ticket.read
        match: {{ method: GET, path: "/rest/api/3/issue/{{issue}}" }}
        attributes: {{ issue: "path:issue" }}
      - name: ticket.transition
        match: {{ method: POST, path: "/rest/api/3/issue/{{issue}}/transitions" }}
        attributes: {{ issue: "path:issue" }}
  - name: payments
    hosts: [payments.test]
    upstream: {tool}
    credential: payments-key
    actions:
      - name: payment.create
        match: {{ method: POST, path: /v1/payments }}
        attributes: {{ amount: "query:amount" }}
  - name: crm
    hosts: [crm.test]
    upstream: {tool}
    protocol: mcp
  - name: ledger
    hosts: [ledger.test]
    upstream: {tool}
    credential: ledger-jwt
    actions:
      - name: entry.create
        match: {{ method: POST, path: /v1/entries }}
policy: {{ files: [policy/*.rego] }}
credentials:
  ledger-jwt: {{ kind: jwt, audience: ledger.test, key_file: keys/signing.pem, max_ttl: 60s }}
  jira-token: {{ kind: secret, file: secrets/jira, header: Authorization, format: "Bearer {{}}" }}
  payments-key: {{ kind: secret, file: secrets/payments, header: Authorization, format: "Bearer {{}}" }}
telemetry: {telemetry}
limits: {{ connect_timeout: 2s, upstream_timeout: 5s, shutdown_timeout: 1s }}
"#
    )
}

/// toolgate exporting to `endpoint` over `protocol`, with the extra `env`.
fn start(tool: &ToolServer, endpoint: &str, protocol: &str, env: &[(&str, &str)]) -> Toolgate {
    let telemetry = format!("{{ otlp: {{ endpoint: \"{endpoint}\", protocol: {protocol} }} }}");
    let signing = toolgate_policy::config::generate_ed25519_pem().unwrap();
    Toolgate::start_with_env(
        &config(&tool.url(), &telemetry),
        &[
            ("policy/main.rego", POLICY),
            ("secrets/jira", &format!("{JIRA_SECRET}\n")),
            ("secrets/payments", PAYMENTS_SECRET),
            ("keys/signing.pem", &signing),
        ],
        env,
    )
}

/// Export soon after each action, so tests need not wait for the 5 s default.
const QUICK: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "50")];

fn metrics(tg: &Toolgate) -> String {
    let (status, body) = http_get(tg.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    body
}

/// Poll `/metrics` (up to 30 s) until `line`'s counter reaches at least `n`; returns the value.
fn wait_for_counter(tg: &Toolgate, name: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(tg);
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if value >= n || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn by_seq(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| int(&s.attributes, "toolgate.chain.seq"));
    spans
}

/// Read a ticket, transition it, try an over-limit payment: allow, allow, deny, one task.
async fn three_actions(tg: &Toolgate) -> serde_json::Value {
    let client = tg.forward_client();
    let task = |rb: reqwest::RequestBuilder| {
        rb.header("x-toolgate-task", "T-42")
            .header("authorization", "Bearer agent-own-token")
    };
    let read = task(client.get("http://jira.test/rest/api/3/issue/SUP-12"));
    assert_eq!(read.send().await.unwrap().status(), 200);
    let close = task(client.post("http://jira.test/rest/api/3/issue/SUP-12/transitions"))
        .body(r#"{"transition":{"id":"31"}}"#);
    assert_eq!(close.send().await.unwrap().status(), 200);
    let pay = task(client.post("http://payments.test/v1/payments?amount=5000"));
    let (status, body) = problem(pay.send().await.unwrap()).await;
    assert_eq!(status, 403);
    body
}

/// Acceptance 1 and 5 over either transport: three spans named by action in one trace, seq
/// 1..3, each linked to the one before, decisions and reasons right, credentials named but
/// never their values, ids matching the problem and the decision log, and the counters.
async fn a_task_is_one_linked_trace(protocol: &str, receiver: Receiver) {
    let tool = ToolServer::http().await;
    let mut tg = start(&tool, &receiver.endpoint(), protocol, QUICK);
    let denied = three_actions(&tg).await;

    let received = receiver.wait_for(3).await;
    assert_eq!(received.len(), 3, "one span per action: {received:#?}");
    let resource = &received[0].resource.attributes;
    assert_eq!(string(resource, "service.name"), Some("toolgate"));
    assert_eq!(string(resource, "toolgate.agent.id"), Some(AGENT));
    assert!(string(resource, "service.version").is_some());
    let spans = by_seq(received.into_iter().map(|r| r.span).collect());

    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["ticket.read", "ticket.transition", "payment.create"]
    );
    let trace = hex(&spans[0].trace_id);
    assert!(spans.iter().all(|s| hex(&s.trace_id) == trace), "one trace");
    assert_eq!(
        denied["trace_id"],
        trace.as_str(),
        "the problem names the trace"
    );
    for (i, span) in spans.iter().enumerate() {
        let a = &span.attributes;
        assert_eq!(span.kind, SpanKind::Client as i32, "{}", span.name);
        assert_eq!(int(a, "toolgate.chain.seq"), Some(i as i64 + 1));
        assert_eq!(string(a, "toolgate.task.id"), Some("T-42"));
        assert_eq!(string(a, "toolgate.agent.id"), Some(AGENT));
        assert_eq!(string(a, "toolgate.action"), Some(span.name.as_str()));
        // The GenAI tool-execution conventions, beside toolgate's own attributes.
        assert_eq!(string(a, "gen_ai.operation.name"), Some("execute_tool"));
        assert_eq!(string(a, "gen_ai.tool.name"), Some(span.name.as_str()));
        assert_eq!(string(a, "gen_ai.agent.id"), Some(AGENT));
        assert_eq!(string(a, "openinference.span.kind"), Some("TOOL"));
        assert_eq!(span.parent_span_id.len(), 8, "a child of the task's root");
        assert_eq!(span.parent_span_id, spans[0].parent_span_id, "one root");
        match i {
            0 => assert!(span.links.is_empty(), "the first action links nowhere"),
            _ => {
                assert_eq!(span.links.len(), 1, "{}", span.name);
                assert_eq!(span.links[0].span_id, spans[i - 1].span_id);
                assert_eq!(span.links[0].trace_id, spans[i - 1].trace_id);
            }
        }
        let events: Vec<&str> = span.events.iter().map(|e| e.name.as_str()).collect();
        let evaluated = span.events.iter().find(|e| e.name == "policy evaluated");
        assert!(
            evaluated
                .is_some_and(|e| int(&e.attributes, "toolgate.policy.eval_duration_us").is_some()),
            "{events:?}"
        );
    }

    let [read, close, pay] = &spans[..] else {
        unreachable!()
    };
    for (span, tool_name, reason) in [
        (read, "jira", "reading tickets is allowed"),
        (close, "jira", "SUP-12 was read earlier in this task"),
    ] {
        let a = &span.attributes;
        assert_eq!(string(a, "toolgate.decision"), Some("allow"));
        assert_eq!(string(a, "toolgate.reason"), Some(reason));
        assert_eq!(string(a, "toolgate.tool"), Some(tool_name));
        assert_eq!(string(a, "toolgate.credential.name"), Some("jira-token"));
        assert_eq!(string(a, "toolgate.credential.kind"), Some("secret"));
        assert_eq!(int(a, "http.response.status_code"), Some(200));
        assert_eq!(int(a, "server.port"), Some(80));
        assert_eq!(string(a, "server.address"), Some("jira.test"));
        assert_eq!(
            span.status.clone().unwrap_or_default().code,
            StatusCode::Unset as i32
        );
        assert!(span.events.iter().any(|e| e.name == "credential issued"));
    }
    assert_eq!(string(&read.attributes, "http.request.method"), Some("GET"));
    assert_eq!(
        string(&read.attributes, "url.path"),
        Some("/rest/api/3/issue/SUP-12")
    );
    assert_eq!(
        string(&close.attributes, "http.request.method"),
        Some("POST")
    );

    let a = &pay.attributes;
    assert_eq!(string(a, "toolgate.decision"), Some("deny"));
    let reason = "payment of 5000 exceeds the limit of 100";
    assert_eq!(string(a, "toolgate.reason"), Some(reason));
    assert_eq!(denied["detail"], reason);
    assert_eq!(int(a, "http.response.status_code"), Some(403));
    assert_eq!(string(a, "toolgate.credential.name"), None);
    let status = pay.status.clone().unwrap();
    assert_eq!(
        (status.code, status.message.as_str()),
        (StatusCode::Error as i32, reason)
    );
    assert!(!pay.events.iter().any(|e| e.name == "credential issued"));

    // No credential value anywhere in what was exported.
    let bodies = receiver.bodies();
    assert!(!bodies.is_empty());
    for body in &bodies {
        for secret in [JIRA_SECRET, PAYMENTS_SECRET, "agent-own-token"] {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} was exported"
            );
        }
    }

    // The decision log names the same trace and span as the exported spans (its own thread
    // writes the lines: wait for each).
    for span in &spans {
        tg.wait_for_stdout(string(&span.attributes, "toolgate.decision_id").unwrap());
    }
    let log = tg.stdout();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    for span in &spans {
        let id = string(&span.attributes, "toolgate.decision_id").unwrap();
        let line = lines.iter().find(|l| l["decision_id"] == id).unwrap();
        assert_eq!(line["trace_id"], hex(&span.trace_id));
        assert_eq!(line["span_id"], hex(&span.span_id));
        assert_eq!(
            line["credential"]["id"].as_str(),
            string(&span.attributes, "toolgate.credential.id"),
            "the span carries the credential id the decision log has"
        );
    }
    assert_eq!(
        denied["decision_id"],
        string(a, "toolgate.decision_id").unwrap()
    );

    // Acceptance 5: the counters, with action labels.
    let text = metrics(&tg);
    for want in [
        "toolgate_requests_total{action=\"ticket.read\",decision=\"allow\"} 1\n",
        "toolgate_requests_total{action=\"ticket.transition\",decision=\"allow\"} 1\n",
        "toolgate_requests_total{action=\"payment.create\",decision=\"deny\"} 1\n",
        "toolgate_credentials_issued_total{kind=\"secret\"} 2\n",
        "toolgate_policy_eval_seconds_count 3\n",
        "toolgate_upstream_duration_seconds_count 2\n",
        "toolgate_spans_dropped_total 0\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }

    // The task's root span goes out when the task ends — here, when toolgate stops: `task
    // T-42`, the parent of all three, in the same trace, with the task's counts.
    let status = tg
        .terminate(Duration::from_secs(30))
        .expect("toolgate stops");
    assert!(status.success(), "{status}");
    let all = receiver.wait_for(4).await;
    let root = all
        .iter()
        .map(|r| &r.span)
        .find(|s| s.name == "task T-42")
        .unwrap_or_else(|| panic!("no task root: {all:#?}"));
    assert_eq!(root.span_id, spans[0].parent_span_id);
    assert!(root.parent_span_id.is_empty());
    assert_eq!(hex(&root.trace_id), trace);
    assert_eq!(root.kind, SpanKind::Internal as i32);
    let a = &root.attributes;
    assert_eq!(string(a, "toolgate.task.id"), Some("T-42"));
    assert_eq!(string(a, "gen_ai.agent.id"), Some(AGENT));
    assert_eq!(string(a, "openinference.span.kind"), Some("AGENT"));
    assert_eq!(int(a, "toolgate.task.actions"), Some(3));
    assert_eq!(int(a, "toolgate.task.decisions.allow"), Some(2));
    assert_eq!(int(a, "toolgate.task.decisions.deny"), Some(1));
    assert_eq!(int(a, "toolgate.task.outcomes.response"), Some(2));
    assert_eq!(int(a, "toolgate.task.outcomes.refused"), Some(1));
    assert_eq!(string(a, "toolgate.task.closed"), Some("shutdown"));
    assert!(root.start_time_unix_nano <= spans[0].start_time_unix_nano);
    assert!(root.end_time_unix_nano >= spans[2].end_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_is_one_linked_trace_over_otlp_http() {
    a_task_is_one_linked_trace("http", Receiver::http().await).await;
}

/// `OTEL_EXPORTER_OTLP_HEADERS` (a collector's API key, say) goes with every export, its value
/// percent-decoded; the span itself arrives (the positive control).
#[tokio::test(flavor = "multi_thread")]
async fn export_headers_from_the_environment_reach_the_collector() {
    let tool = ToolServer::http().await;
    let receiver = Receiver::http().await;
    let tg = start(
        &tool,
        &receiver.endpoint(),
        "http",
        &[
            QUICK[0],
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=s3cret%2C1, x-tenant=acme",
            ),
        ],
    );
    let read = tg
        .forward_client()
        .get("http://jira.test/rest/api/3/issue/SUP-1")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(receiver.wait_for(1).await.len(), 1);
    let headers = receiver.headers();
    assert!(!headers.is_empty());
    for h in &headers {
        assert_eq!(h["x-api-key"], "s3cret,1");
        assert_eq!(h["x-tenant"], "acme");
        assert_eq!(h["content-type"], "application/x-protobuf");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_is_one_linked_trace_over_otlp_grpc() {
    a_task_is_one_linked_trace("grpc", Receiver::grpc().await).await;
}

/// Ending a task through the operator API closes its root span at once (`closed: ended`),
/// while toolgate runs on: the backend sees the finished task without waiting for idleness
/// or shutdown. Another task still running keeps its root open (control).
#[tokio::test(flavor = "multi_thread")]
async fn ending_a_task_exports_its_root_span_at_once() {
    let receiver = Receiver::http().await;
    let tool = ToolServer::http().await;
    let telemetry = format!(
        "{{ otlp: {{ endpoint: \"{}\", protocol: http }} }}",
        receiver.endpoint()
    );
    let config = format!(
        "{}admin: {{ token_file: operator-token }}\n",
        config(&tool.url(), &telemetry)
    );
    let signing = toolgate_policy::config::generate_ed25519_pem().unwrap();
    let tg = Toolgate::start_with_env(
        &config,
        &[
            ("policy/main.rego", POLICY),
            ("secrets/jira", JIRA_SECRET),
            ("secrets/payments", PAYMENTS_SECRET),
            ("keys/signing.pem", &signing),
            support::OPERATOR_TOKEN_FILE,
        ],
        QUICK,
    );
    let client = tg.forward_client();
    for task in ["T-done", "T-running"] {
        let read = client
            .get("http://jira.test/rest/api/3/issue/SUP-7")
            .header("x-toolgate-task", task);
        assert_eq!(read.send().await.unwrap().status(), 200);
    }
    assert_eq!(receiver.wait_for(2).await.len(), 2, "the two action spans");

    let ended = support::operator(
        tg.admin,
        "POST",
        "/v1/tasks/T-done/end",
        Some(r#"{"by": "orchestrator", "reason": "done"}"#),
    );
    assert_eq!(ended.status, 200, "{}", ended.body);

    let all = receiver.wait_for(3).await;
    let roots: Vec<&Span> = all
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.name.starts_with("task "))
        .collect();
    assert_eq!(roots.len(), 1, "only the ended task's root: {all:#?}");
    let root = roots[0];
    assert_eq!(root.name, "task T-done");
    assert_eq!(
        string(&root.attributes, "toolgate.task.closed"),
        Some("ended")
    );
    assert_eq!(int(&root.attributes, "toolgate.task.actions"), Some(1));
    let action = all
        .iter()
        .map(|r| &r.span)
        .find(|s| {
            s.name == "ticket.read" && string(&s.attributes, "toolgate.task.id") == Some("T-done")
        })
        .unwrap();
    assert_eq!(
        action.parent_span_id, root.span_id,
        "the action is its child"
    );
    assert_eq!(action.trace_id, root.trace_id);
    // Still running: no second root arrives while the process lives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.spans().len(), 3, "T-running's root stays open");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minted_jwt_is_named_by_its_jti_on_the_span_and_in_the_decision_log() {
    let receiver = Receiver::http().await;
    let tool = ToolServer::http().await;
    let tg = start(&tool, &receiver.endpoint(), "http", QUICK);
    let resp = tg
        .forward_client()
        .post("http://ledger.test/v1/entries")
        .header("x-toolgate-task", "T-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", tg.logs());

    // The token the tool received, verified against the admin JWKS: its jti.
    let got = tool.only();
    let token = got.headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    let (status, jwks) = http_get(tg.admin, "/.well-known/jwks.json").unwrap();
    assert_eq!(status, 200, "{jwks}");
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["ledger.test"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation)
        .unwrap()
        .claims;
    let jti = claims["jti"].as_str().unwrap();

    let spans = receiver.wait_for(1).await;
    let span = &spans[0].span;
    assert_eq!(span.name, "entry.create");
    let a = &span.attributes;
    assert_eq!(string(a, "toolgate.credential.id"), Some(jti), "{a:?}");
    assert_eq!(string(a, "toolgate.credential.name"), Some("ledger-jwt"));
    assert_eq!(string(a, "toolgate.credential.kind"), Some("jwt"));
    let issued = span
        .events
        .iter()
        .find(|e| e.name == "credential issued")
        .expect("a credential issued event");
    assert_eq!(
        string(&issued.attributes, "toolgate.credential.id"),
        Some(jti)
    );
    assert_eq!(
        string(&issued.attributes, "toolgate.credential.kind"),
        Some("jwt")
    );

    // The decision log is written by its own thread: wait for the line.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tg.stdout().lines().next().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let line: serde_json::Value =
        serde_json::from_str(tg.stdout().lines().next().unwrap()).unwrap();
    assert_eq!(line["credential"]["id"], jti, "{line}");
    assert_eq!(line["span_id"], hex(&span.span_id));
    // The id travels, never the token.
    for body in receiver.bodies() {
        assert!(!body.windows(token.len()).any(|w| w == token.as_bytes()));
    }
    assert!(!tg.stdout().contains(&token));
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_traceparent_makes_the_action_a_child_and_the_tool_gets_toolgates_span() {
    let receiver = Receiver::http().await;
    let tool = ToolServer::http().await;
    let tg = start(&tool, &receiver.endpoint(), "http", QUICK);
    let client = tg.forward_client();
    let agent_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let agent_span = "00f067aa0ba902b7";
    let resp = client
        .get("http://jira.test/rest/api/3/issue/SUP-1")
        .header("traceparent", format!("00-{agent_trace}-{agent_span}-01"))
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A malformed traceparent is ignored: toolgate starts the trace, and drops tracestate.
    let resp = client
        .get("http://jira.test/rest/api/3/issue/SUP-2")
        .header("x-toolgate-task", "T-7")
        .header("traceparent", "00-zz-00f067aa0ba902b7-01")
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let spans: Vec<Span> = receiver
        .wait_for(2)
        .await
        .into_iter()
        .map(|r| r.span)
        .collect();
    let child = spans
        .iter()
        .find(|s| s.name == "ticket.read" && hex(&s.trace_id) == agent_trace);
    let child = child.unwrap_or_else(|| panic!("no span in the agent's trace: {spans:#?}"));
    assert_eq!(
        hex(&child.parent_span_id),
        agent_span,
        "child of the agent's span"
    );
    assert_eq!(
        string(&child.attributes, "toolgate.task.id"),
        Some(agent_trace),
        "the agent's trace names the task"
    );
    let own = spans
        .iter()
        .find(|s| string(&s.attributes, "toolgate.task.id") == Some("T-7"))
        .unwrap();
    assert_ne!(hex(&own.trace_id), agent_trace);
    // In toolgate's own trace: a child of its task's root, not of the agent's span.
    assert_eq!(own.parent_span_id.len(), 8);
    assert_ne!(hex(&own.parent_span_id), agent_span);

    let got = tool.received();
    assert_eq!(got.len(), 2);
    let first = got.iter().find(|r| r.target.ends_with("SUP-1")).unwrap();
    assert_eq!(
        first.headers["traceparent"],
        format!("00-{agent_trace}-{}-01", hex(&child.span_id)),
        "the tool's parent is toolgate's span"
    );
    assert_eq!(first.headers["tracestate"], "vendor=opaque");
    let second = got.iter().find(|r| r.target.ends_with("SUP-2")).unwrap();
    assert_eq!(
        second.headers["traceparent"],
        format!("00-{}-{}-01", hex(&own.trace_id), hex(&own.span_id))
    );
    assert!(!second.headers.contains_key("tracestate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_task_trace_is_derived_from_the_task_so_it_survives_a_restart() {
    let receiver = Receiver::http().await;
    let tool = ToolServer::http().await;
    let mut traces = Vec::new();
    for _ in 0..2 {
        let mut tg = start(&tool, &receiver.endpoint(), "http", QUICK);
        let resp = tg
            .forward_client()
            .get("http://jira.test/rest/api/3/issue/SUP-3")
            .header("x-toolgate-task", "T-long-running")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(tg.terminate(Duration::from_secs(30)).is_some());
        // Each run exports its action and, at shutdown, the task's root.
        let n = 2 * (traces.len() + 1);
        let spans = receiver.wait_for(n).await;
        let run = &spans[n - 2..];
        let action = run.iter().find(|r| r.span.name == "ticket.read").unwrap();
        let root = run.iter().find(|r| r.span.name == "task T-long-running");
        let root = root.unwrap_or_else(|| panic!("{spans:#?}"));
        assert_eq!(action.span.parent_span_id, root.span.span_id);
        traces.push((hex(&action.span.trace_id), hex(&root.span.span_id)));
    }
    assert_eq!(traces[0].0, traces[1].0, "one trace across the restart");
    assert_ne!(traces[0].1, traces[1].1, "each run's root is its own span");
}

#[tokio::test(flavor = "multi_thread")]
async fn collector_down_leaves_traffic_unaffected_and_counts_dropped_spans() {
    let tool = ToolServer::http().await;
    // Nothing listens there.
    let closed = support::closed_port();
    let endpoint = format!("http://127.0.0.1:{}", closed.port);
    let tg = start(
        &tool,
        &endpoint,
        "http",
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
        ],
    );
    let client = tg.forward_client();
    for i in 0..5 {
        let resp = client
            .get(format!("http://jira.test/rest/api/3/issue/SUP-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(tool.received().len(), 5);
    let dropped = wait_for_counter(&tg, "toolgate_spans_dropped_total", 5);
    assert_eq!(dropped, 5, "{}", metrics(&tg));
    assert!(tg.wait_for_log("span export failed"), "{}", tg.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_never_answers_fills_the_queue_and_spans_are_dropped_not_waited_for() {
    // Accepts connections and never answers: every export hangs until its timeout.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", black_hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = black_hole.accept().await {
            open.push(stream);
        }
    });
    let tool = ToolServer::http().await;
    let tg = start(
        &tool,
        &endpoint,
        "http",
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "2"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "120000"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "120000"),
        ],
    );
    let client = tg.forward_client();
    for i in 0..10 {
        let resp = client
            .get(format!("http://jira.test/rest/api/3/issue/SUP-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(tool.received().len(), 10);
    // One span hangs in export, two wait in the queue, the other seven are dropped.
    let dropped = wait_for_counter(&tg, "toolgate_spans_dropped_total", 7);
    assert!(dropped >= 7, "{}", metrics(&tg));
    held.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_spans_still_waiting_for_their_batch() {
    let receiver = Receiver::grpc().await;
    let tool = ToolServer::http().await;
    let mut tg = start(
        &tool,
        &receiver.endpoint(),
        "grpc",
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    for issue in ["SUP-1", "SUP-2"] {
        let resp = tg
            .forward_client()
            .get(format!("http://jira.test/rest/api/3/issue/{issue}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Both spans are queued once both requests are counted.
    assert_eq!(
        wait_for_counter(
            &tg,
            "toolgate_requests_total{action=\"ticket.read\",decision=\"allow\"}",
            2
        ),
        2
    );
    assert!(
        receiver.spans().is_empty(),
        "exported before the batch delay"
    );
    let status = tg
        .terminate(Duration::from_secs(30))
        .expect("toolgate did not stop");
    assert!(status.success(), "{status}");
    let spans = receiver.spans();
    let mut names: Vec<&str> = spans.iter().map(|r| r.span.name.as_str()).collect();
    names.sort();
    // The two actions of the agent's default task, and that task's root.
    assert_eq!(
        names,
        ["task default-1", "ticket.read", "ticket.read"],
        "{spans:#?}"
    );
}

/// An MCP `tools/call` through the proxy: its span carries the MCP conventions (method, the
/// JSON-RPC id, the session the request names, the protocol version) and the GenAI tool name
/// and call id — never the call's arguments; `tools/list` gets the MCP attributes only.
#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_tool_call_span_carries_the_mcp_and_genai_conventions_and_no_argument() {
    let receiver = Receiver::http().await;
    let tool = ToolServer::http().await;
    let tg = start(&tool, &receiver.endpoint(), "http", QUICK);
    let client = tg.forward_client();
    let call = serde_json::json!({
        "jsonrpc": "2.0", "id": "call-7", "method": "tools/call",
        "params": { "name": "lookup_customer", "arguments": { "customer": "ACME-ARG-VALUE" } }
    });
    let list = serde_json::json!({ "jsonrpc": "2.0", "id": 8, "method": "tools/list" });
    for body in [&call, &list] {
        let resp = client
            .post("http://crm.test/mcp")
            .header("x-toolgate-task", "T-mcp")
            .header("mcp-session-id", "191c4850af6c49e08843a3f6c80e5046")
            .header("mcp-protocol-version", "2025-11-25")
            .header("accept", "application/json, text/event-stream")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The positive control: the tool got the call, arguments and all.
    let got = tool.received();
    assert!(String::from_utf8_lossy(&got[0].body).contains("ACME-ARG-VALUE"));

    let spans: Vec<Span> = receiver
        .wait_for(2)
        .await
        .into_iter()
        .map(|r| r.span)
        .collect();
    let called = spans
        .iter()
        .find(|s| s.name == "crm.lookup_customer")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    let a = &called.attributes;
    for (key, want) in [
        ("gen_ai.operation.name", "execute_tool"),
        ("gen_ai.tool.name", "lookup_customer"),
        ("gen_ai.tool.call.id", "call-7"),
        ("gen_ai.agent.id", AGENT),
        ("mcp.method.name", "tools/call"),
        ("jsonrpc.request.id", "call-7"),
        ("mcp.session.id", "191c4850af6c49e08843a3f6c80e5046"),
        ("mcp.protocol.version", "2025-11-25"),
        ("openinference.span.kind", "TOOL"),
        ("toolgate.action", "crm.lookup_customer"),
        ("toolgate.decision", "allow"),
    ] {
        assert_eq!(string(a, key), Some(want), "{key}");
    }
    let listed = spans
        .iter()
        .find(|s| s.name == "crm.mcp.tools_list")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    let a = &listed.attributes;
    assert_eq!(string(a, "mcp.method.name"), Some("tools/list"));
    assert_eq!(string(a, "jsonrpc.request.id"), Some("8"));
    assert_eq!(string(a, "gen_ai.operation.name"), None, "not a tool call");
    for body in receiver.bodies() {
        let needle = b"ACME-ARG-VALUE";
        assert!(
            !body.windows(needle.len()).any(|w| w == needle),
            "an argument was exported"
        );
    }
}
