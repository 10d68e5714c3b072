//! MCP 2026-07-28 through toolgate, as raw JSON-RPC per the specification (no SDK speaks this
//! revision as a client in every case tested here): routing headers checked against the body
//! (-32020, HTTP 400, nothing forwarded) with the matching request as positive control, byte
//! for byte; the session-based era beside it on the same tool; the task and trace context of
//! `params._meta`; `resources/read`, `prompts/get` and `completion/complete` as actions;
//! `Mcp-Param-*` against the definition toolgate saw listed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "mcp/fake.rs"]
mod fake;
mod support;

use fake::FakeMcp;
use serde_json::{json, Value};
use support::Toolgate;

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": true, "reason": "allowed"}

decision := {"allow": false, "reason": "deleting customers needs a human"} if {
	input.action.name == "crm.delete_customer"
}

decision := {"allow": false, "reason": "secrets are not read"} if {
	input.action.name == "crm.mcp.resources_read"
	startswith(input.action.attributes.uri, "secret://")
}

decision := {"allow": false, "reason": "no payroll prompt"} if {
	input.action.name == "crm.mcp.prompts_get"
	input.action.attributes.name == "payroll"
}

decision := {"allow": false, "reason": sprintf("no completion for %s", [input.action.attributes.name])} if {
	input.action.name == "crm.mcp.completion_complete"
}
"#;

const VERSION: &str = "2026-07-28";

fn start(server: &FakeMcp) -> Toolgate {
    start_with(server, "", &[])
}

fn start_with(server: &FakeMcp, extra: &str, files: &[(&str, &str)]) -> Toolgate {
    let mut all = vec![("policy/main.rego", POLICY), support::OPERATOR_TOKEN_FILE];
    all.extend_from_slice(files);
    Toolgate::start(
        &format!(
            r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: crm
    hosts: [crm.test]
    upstream: {}
    protocol: mcp
policy: {{ files: [policy/*.rego] }}
limits: {{ connect_timeout: 2s, upstream_timeout: 10s, shutdown_timeout: 1s }}
admin: {{ token_file: operator-token }}
{extra}
"#,
            server.url()
        ),
        &all,
    )
}

/// A 2026-07-28 request: `_meta` carries the per-request envelope.
fn request(id: u64, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn call(id: u64, name: &str) -> Value {
    request(
        id,
        "tools/call",
        json!({"name": name, "arguments": {"customer": "acme"}}),
    )
}

/// The headers a conforming client sends with `message`.
fn mirrored(message: &Value) -> Vec<(String, String)> {
    let method = message["method"].as_str().unwrap();
    let mut h = vec![
        ("mcp-protocol-version".to_string(), VERSION.to_string()),
        ("mcp-method".to_string(), method.to_string()),
    ];
    let name = match method {
        "resources/read" => message["params"]["uri"].as_str(),
        _ => message["params"]["name"].as_str(),
    };
    if let Some(n) = name {
        h.push(("mcp-name".to_string(), n.to_string()));
    }
    h
}

/// POST `body` (bytes as given) with `headers`; the status and the JSON answer.
async fn post(tg: &Toolgate, headers: &[(String, String)], body: &str) -> (u16, Value) {
    let mut req = tg
        .forward_client()
        .post("http://crm.test/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.body(body.to_string()).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn with(mut headers: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    headers.retain(|(k, _)| k != name);
    headers.push((name.to_string(), value.to_string()));
    headers
}

fn without(mut headers: Vec<(String, String)>, name: &str) -> Vec<(String, String)> {
    headers.retain(|(k, _)| k != name);
    headers
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mismatched_mcp_name_is_refused_with_32020_and_never_reaches_the_server() {
    let server = FakeMcp::start(vec![]).await;
    let tg = start(&server);
    // Positive control: the matching request reaches the server, byte for byte.
    let good = call(1, "search").to_string();
    let (status, answer) = post(&tg, &mirrored(&call(1, "search")), &good).await;
    assert_eq!(status, 200, "{answer}\n{}", tg.logs());
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "called search with "
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].raw, good.as_bytes());
    assert_eq!(seen[0].headers["mcp-name"], "search");
    assert_eq!(seen[0].headers["mcp-method"], "tools/call");

    // The header an intermediary routes on says `search`; the body runs `export_customers`.
    let body = call(2, "export_customers").to_string();
    let headers = with(mirrored(&call(2, "export_customers")), "mcp-name", "search");
    let (status, answer) = post(&tg, &headers, &body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["jsonrpc"], "2.0");
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["error"]["code"], -32020, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("mcp-name"), "{message}");
    assert_eq!(answer["error"]["data"]["action"], "crm.export_customers");
    assert_eq!(
        server.seen().len(),
        1,
        "the mismatched request reached the server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_routing_header_rule_is_enforced_before_the_server() {
    let server = FakeMcp::start(vec![]).await;
    let tg = start(&server);
    let message = call(3, "search");
    let body = message.to_string();
    let good = mirrored(&message);
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "method differs",
            with(good.clone(), "mcp-method", "tools/list"),
        ),
        (
            "method in another case",
            with(good.clone(), "mcp-method", "Tools/Call"),
        ),
        ("method missing", without(good.clone(), "mcp-method")),
        ("name missing", without(good.clone(), "mcp-name")),
        (
            "version missing",
            without(good.clone(), "mcp-protocol-version"),
        ),
        (
            "version differs",
            with(good.clone(), "mcp-protocol-version", "2025-11-25"),
        ),
        (
            "malformed sentinel",
            with(good.clone(), "mcp-name", "=?base64?c2VhcmNo?=x"),
        ),
        (
            "sentinel of another name",
            with(good.clone(), "mcp-name", "=?base64?ZXhwb3J0?="),
        ),
        (
            "stray param header",
            with(good.clone(), "mcp-param-region", "eu"),
        ),
    ];
    for (why, headers) in cases {
        let (status, answer) = post(&tg, &headers, &body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_i64()),
            (400, Some(-32020)),
            "{why}: {answer}"
        );
        assert_eq!(answer["id"], 3, "{why}");
    }
    // A duplicated routing header: first-copy and last-copy readers would disagree.
    let resp = tg
        .forward_client()
        .post("http://crm.test/mcp")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", VERSION)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "search")
        .header("mcp-name", "delete_customer")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(server.seen().is_empty(), "{:?}", server.methods());
    // Positive controls: the Base64 sentinel of the right name, and the 2025 era on the same
    // tool with no routing headers at all.
    let (status, _) = post(&tg, &with(good, "mcp-name", "=?base64?c2VhcmNo?="), &body).await;
    assert_eq!(status, 200);
    let legacy = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "search", "arguments": {}}});
    let (status, answer) = post(&tg, &[], &legacy.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    // A 2025 request that mirrors its method wrongly is refused all the same.
    let (status, _) = post(
        &tg,
        &[("mcp-method".into(), "tools/list".into())],
        &legacy.to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(server.methods(), vec!["tools/call", "tools/call"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_stateless_call_is_a_json_rpc_error() {
    let server = FakeMcp::start(vec![]).await;
    let tg = start(&server);
    let message = call(5, "delete_customer");
    let (status, answer) = post(&tg, &mirrored(&message), &message.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["error"]["code"], -32001);
    assert_eq!(
        answer["error"]["message"],
        "deleting customers needs a human"
    );
    assert!(server.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn meta_names_the_task_and_a_conflict_with_the_header_is_refused() {
    let server = FakeMcp::start(vec![]).await;
    let tg = start(&server);
    let mut message = call(6, "search");
    message["params"]["_meta"]["toolgate/task"] = json!("T-meta");
    let (status, _) = post(&tg, &mirrored(&message), &message.to_string()).await;
    assert_eq!(status, 200, "{}", tg.logs());
    let chain = support::operator_json(tg.admin, "/v1/tasks/T-meta");
    assert_eq!(chain["chain"][0]["action"], "crm.search", "{chain}");

    // The same task in the header too: fine. Another task: refused, never one or the other.
    let same = with(mirrored(&message), "x-toolgate-task", "T-meta");
    assert_eq!(post(&tg, &same, &message.to_string()).await.0, 200);
    let other = with(mirrored(&message), "x-toolgate-task", "T-other");
    let (status, problem) = post(&tg, &other, &message.to_string()).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["type"], "urn:toolgate:problem:rejected");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("T-meta") && detail.contains("T-other"),
        "{detail}"
    );
    assert_eq!(server.seen().len(), 2);
}

/// A task token signed by the orchestrator the test trusts, naming `task`.
fn task_token(key: &toolgate_policy::config::SigningKey, task: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": "https://orchestrator.test", "aud": "toolgate", "task": task,
        "iat": now, "exp": now + 600});
    jsonwebtoken::encode(key.header(), &claims, key.encoding_key()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_meta_task_other_than_the_task_tokens_is_refused() {
    let server = FakeMcp::start(vec![]).await;
    let key = toolgate_policy::config::SigningKey::from_pem(
        toolgate_policy::config::generate_ed25519_pem()
            .unwrap()
            .as_bytes(),
        jsonwebtoken::Algorithm::EdDSA,
    )
    .unwrap();
    let jwks = json!({ "keys": [key.jwk().clone()] }).to_string();
    let tg = start_with(
        &server,
        "task_tokens: { issuers: [{ issuer: \"https://orchestrator.test\", jwks_file: orchestrator.json, audience: toolgate }] }",
        &[("orchestrator.json", &jwks)],
    );
    let token = task_token(&key, "T-orch");
    let mut message = call(8, "search");

    // Positive control: `_meta` names the task the orchestrator's token names.
    message["params"]["_meta"]["toolgate/task"] = json!("T-orch");
    let headers = with(mirrored(&message), "x-toolgate-task-token", &token);
    let (status, answer) = post(&tg, &headers, &message.to_string()).await;
    assert_eq!(status, 200, "{answer} {}", tg.logs());
    assert_eq!(server.seen().len(), 1);
    let chain = support::operator_json(tg.admin, "/v1/tasks/T-orch");
    assert_eq!(chain["chain"][0]["action"], "crm.search", "{chain}");

    // The attack: a verified task, and another one in `_meta`: refused, naming both (never
    // one silently preferred), and the server sees nothing.
    message["params"]["_meta"]["toolgate/task"] = json!("T-other");
    let headers = with(mirrored(&message), "x-toolgate-task-token", &token);
    let (status, problem) = post(&tg, &headers, &message.to_string()).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["type"], "urn:toolgate:problem:rejected");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("T-orch") && detail.contains("T-other") && detail.contains("task token"),
        "{detail}"
    );
    assert_eq!(
        server.seen().len(),
        1,
        "the refused request never reached the server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn meta_traceparent_puts_the_action_in_the_agents_trace() {
    let server = FakeMcp::start(vec![]).await;
    let tg = start(&server);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut message = call(7, "delete_customer");
    message["params"]["_meta"]["traceparent"] = json!(format!("00-{trace}-00f067aa0ba902b7-01"));
    let (_, answer) = post(&tg, &mirrored(&message), &message.to_string()).await;
    assert_eq!(answer["error"]["data"]["trace_id"], trace, "{answer}");
    // No task named: the trace groups the actions, as the traceparent header would.
    let chain = support::operator_json(tg.admin, &format!("/v1/tasks/{trace}"));
    assert_eq!(chain["chain"][0]["action"], "crm.delete_customer");
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_prompts_and_completions_are_actions_with_their_target() {
    let server = FakeMcp::start(vec![]).await;
    let tg = start(&server);
    let cases = [
        (
            request(10, "resources/read", json!({"uri": "secret://payroll"})),
            "crm.mcp.resources_read",
            Some("secrets are not read"),
        ),
        (
            request(11, "resources/read", json!({"uri": "file:///readme"})),
            "crm.mcp.resources_read",
            None,
        ),
        (
            request(
                12,
                "prompts/get",
                json!({"name": "payroll", "arguments": {}}),
            ),
            "crm.mcp.prompts_get",
            Some("no payroll prompt"),
        ),
        (
            request(13, "prompts/get", json!({"name": "greeting"})),
            "crm.mcp.prompts_get",
            None,
        ),
        (
            request(
                14,
                "completion/complete",
                json!({"ref": {"type": "ref/prompt", "name": "greeting"},
                "argument": {"name": "who", "value": "a"}}),
            ),
            "crm.mcp.completion_complete",
            Some("no completion for greeting"),
        ),
    ];
    for (message, action, denied) in &cases {
        let (status, answer) = post(&tg, &mirrored(message), &message.to_string()).await;
        assert_eq!(status, 200, "{message}: {answer}");
        match denied {
            Some(reason) => {
                assert_eq!(answer["error"]["message"], *reason, "{answer}");
                assert_eq!(answer["error"]["data"]["action"], *action);
            }
            None => assert_eq!(answer["result"], json!({}), "{answer}"),
        }
    }
    assert_eq!(server.methods(), vec!["resources/read", "prompts/get"]);
    // A resource read must name its resource; its Mcp-Name must be that URI.
    let nameless = request(15, "resources/read", json!({}));
    let (status, problem) = post(
        &tg,
        &without(mirrored(&nameless), "mcp-name"),
        &nameless.to_string(),
    )
    .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (400, Some("urn:toolgate:problem:rejected"))
    );
    let read = request(16, "resources/read", json!({"uri": "file:///readme"}));
    let (status, answer) = post(
        &tg,
        &with(mirrored(&read), "mcp-name", "file:///other"),
        &read.to_string(),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_i64()),
        (400, Some(-32020))
    );
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn param_headers_are_checked_against_the_listed_definition() {
    let sql = json!({"name": "execute_sql", "description": "Run SQL",
        "inputSchema": {"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "limit": {"type": "integer", "x-mcp-header": "Limit"},
            "query": {"type": "string"}}}});
    let server = FakeMcp::start(vec![sql]).await;
    let tg = start(&server);
    let message = request(
        20,
        "tools/call",
        json!({"name": "execute_sql",
        "arguments": {"region": "us-west1", "limit": 5, "query": "select 1"}}),
    );
    let body = message.to_string();
    let good = with(
        with(mirrored(&message), "mcp-param-region", "us-west1"),
        "mcp-param-limit",
        "5",
    );
    // Toolgate has not seen the definition: it cannot check the headers, and says how to fix it.
    let (status, answer) = post(&tg, &good, &body).await;
    assert_eq!(
        (status, answer["error"]["code"].as_i64()),
        (400, Some(-32020)),
        "{answer}"
    );
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tools/list"));
    // The client's recovery: list the tools (through toolgate), send the call again.
    let list = request(21, "tools/list", json!({}));
    let (status, _) = post(&tg, &mirrored(&list), &list.to_string()).await;
    assert_eq!(status, 200);
    let (status, answer) = post(&tg, &good, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        server.seen().last().unwrap().headers["mcp-param-region"],
        "us-west1"
    );
    let cases = [
        (
            "another region",
            with(good.clone(), "mcp-param-region", "eu-west1"),
        ),
        ("region missing", without(good.clone(), "mcp-param-region")),
        (
            "undeclared header",
            with(good.clone(), "mcp-param-tenant", "a"),
        ),
        ("limit differs", with(good.clone(), "mcp-param-limit", "6")),
    ];
    for (why, headers) in cases {
        let (status, answer) = post(&tg, &headers, &body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_i64()),
            (400, Some(-32020)),
            "{why}: {answer}"
        );
    }
    // An integer may be mirrored as 5.0; an encoded region must decode to the argument.
    let (status, _) = post(&tg, &with(good.clone(), "mcp-param-limit", "5.0"), &body).await;
    assert_eq!(status, 200);
    let encoded = with(good, "mcp-param-region", "=?base64?dXMtd2VzdDE=?=");
    assert_eq!(post(&tg, &encoded, &body).await.0, 200);
    assert_eq!(
        server.methods(),
        vec!["tools/list", "tools/call", "tools/call", "tools/call"]
    );
}
