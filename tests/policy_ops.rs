//! Policy that sees the whole task, operated like OPA: the chain ledger, dry-run, hot reload,
//! decision logs and revocation — end to end through the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{http_get, problem, ToolServer, Toolgate};

const SECRET: &str = "jira-secret-value-4e1d";

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read"

decision := {"allow": true, "reason": "read earlier in this task"} if {
    input.action.name == "ticket.transition"
    read_in_task(input.action.attributes.issue)
}

decision := {"allow": false, "reason": sprintf("read %s in this task before changing it", [input.action.attributes.issue])} if {
    input.action.name == "ticket.transition"
    not read_in_task(input.action.attributes.issue)
}

decision := {"allow": false, "reason": "payments over 100 need a human"} if input.action.name == "payment.create"

# A rule that never finishes in time: the evaluation limit must stop it.
decision := {"allow": true} if {
    input.action.name == "ticket.search"
    count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j]) > 0
}

read_in_task(issue) if {
    some e in input.chain
    e.action == "ticket.read"
    e.attributes.issue == issue
    e.status == 200
}
"#;

fn config(upstream: &str, extra: &str) -> String {
    format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {upstream}
    credential: jira-token
    actions:
      - name: ticket.read
        match: {{ method: GET, path: "/rest/api/3/issue/{{issue}}" }}
        attributes: {{ issue: "path:issue" }}
      - name: ticket.transition
        match: {{ method: POST, path: "/rest/api/3/issue/{{issue}}/transitions" }}
        attributes: {{ issue: "path:issue" }}
      - name: ticket.search
        match: {{ method: GET, path: /rest/api/3/search }}
      - name: payment.create
        match: {{ method: POST, path: /v1/payments }}
policy: {{ files: [policy/*.rego] }}
credentials:
  jira-token: {{ kind: secret, file: secrets/jira, header: Authorization, format: "Bearer {{}}" }}
telemetry: {{ decision_log: decisions.jsonl }}
limits: {{ shutdown_timeout: 1s }}
admin: {{ token_file: operator-token }}
{extra}
"#
    )
}

fn start(tool: &ToolServer, extra: &str) -> Toolgate {
    Toolgate::start(
        &config(&tool.url(), extra),
        &[
            ("policy/main.rego", POLICY),
            ("secrets/jira", SECRET),
            support::OPERATOR_TOKEN_FILE,
        ],
    )
}

async fn send(tg: &Toolgate, method: &str, path: &str, task: &str) -> reqwest::Response {
    tg.forward_client()
        .request(method.parse().unwrap(), format!("http://jira.test{path}"))
        .header("x-toolgate-task", task)
        .send()
        .await
        .unwrap()
}

/// An operator API read, with the operator token.
fn admin_json(tg: &Toolgate, path: &str) -> Value {
    support::operator_json(tg.admin, path)
}

/// Decision-log lines written so far.
fn decisions(tg: &Toolgate) -> Vec<Value> {
    std::fs::read_to_string(tg.dir.path().join("decisions.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
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
async fn a_transition_is_denied_until_the_ticket_was_read_in_the_same_task() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, "");
    let transition = "/rest/api/3/issue/SUP-7/transitions";

    let (status, body) = problem(send(&tg, "POST", transition, "T-A").await).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("read SUP-7 in this task before changing it"))
    );

    // Another task's read does not count for T-A.
    assert_eq!(
        send(&tg, "GET", "/rest/api/3/issue/SUP-7", "T-B")
            .await
            .status(),
        200
    );
    let (status, _) = problem(send(&tg, "POST", transition, "T-A").await).await;
    assert_eq!(status, 403);

    assert_eq!(
        send(&tg, "GET", "/rest/api/3/issue/SUP-7", "T-A")
            .await
            .status(),
        200
    );
    assert_eq!(send(&tg, "POST", transition, "T-A").await.status(), 200);

    let targets: Vec<String> = tool
        .received()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(
        targets,
        [
            "GET /rest/api/3/issue/SUP-7",
            "GET /rest/api/3/issue/SUP-7",
            format!("POST {transition}").as_str()
        ]
    );

    let chain = admin_json(&tg, "/v1/tasks/T-A");
    let steps: Vec<(String, String, u64)> = chain["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["decision"].as_str().unwrap().into(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("ticket.transition", "deny", 403),
        ("ticket.transition", "deny", 403),
        ("ticket.read", "allow", 200),
        ("ticket.transition", "allow", 200),
    ];
    assert_eq!(
        steps,
        want.map(|(a, d, s)| (a.to_string(), d.to_string(), s))
    );
    assert_eq!(chain["chain"][3]["seq"], 4);
    assert_eq!(chain["chain"][2]["attributes"]["issue"], "SUP-7");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_never_exceeds_its_per_task_and_task_count_bounds() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, "chain: { max_actions: 3, max_tasks: 32 }");
    for _ in 0..10 {
        assert_eq!(
            send(&tg, "GET", "/rest/api/3/issue/X", "T-long")
                .await
                .status(),
            200
        );
    }
    let chain = admin_json(&tg, "/v1/tasks/T-long")["chain"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(chain.len(), 3);
    assert_eq!(
        chain
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [8, 9, 10]
    );

    let client = tg.forward_client();
    for i in 0..300 {
        let resp = client
            .get("http://jira.test/rest/api/3/issue/X")
            .header("x-toolgate-task", format!("T-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let stats = admin_json(&tg, "/v1/tasks");
    assert!(stats["tasks"].as_u64().unwrap() <= 32, "{stats}");
    assert!(stats["entries"].as_u64().unwrap() <= 32 * 3, "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_policy_is_denied_at_the_limit_and_the_proxy_stays_responsive() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, "");
    let (status, body) = problem(send(&tg, "GET", "/rest/api/3/search", "T-1").await).await;
    assert_eq!(status, 403);
    assert_eq!(body["title"], "policy error");
    assert_eq!(body["detail"], "policy limit exceeded");
    assert!(tool.received().is_empty());
    assert_eq!(
        send(&tg, "GET", "/rest/api/3/issue/A", "T-1")
            .await
            .status(),
        200
    );
    assert_eq!(http_get(tg.admin, "/healthz").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_forwards_a_would_deny_untouched_and_logs_it() {
    let tool = ToolServer::http().await;
    let tg = Toolgate::start(
        &config(&tool.url(), "").replace(
            "policy: { files: [policy/*.rego] }",
            "policy: { files: [policy/*.rego], mode: dry-run }",
        ),
        &[
            ("policy/main.rego", POLICY),
            ("secrets/jira", SECRET),
            support::OPERATOR_TOKEN_FILE,
        ],
    );
    let resp = tg
        .forward_client()
        .post("http://jira.test/v1/payments")
        .header("x-toolgate-task", "T-dry")
        .header("authorization", "Bearer agent-own-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a would-deny is forwarded in dry-run");
    let got = tool.only();
    assert_eq!(
        got.headers["authorization"], "Bearer agent-own-token",
        "dry-run leaves the agent's credential"
    );
    wait_until("the decision log line", || !decisions(&tg).is_empty());
    let line = &decisions(&tg)[0];
    assert_eq!(line["action"], "payment.create");
    assert_eq!(line["result"]["allow"], false);
    assert_eq!(line["result"]["dry_run"], true);
    assert_eq!(line["result"]["reason"], "payments over 100 need a human");
    assert_eq!(
        admin_json(&tg, "/v1/tasks/T-dry")["chain"][0]["dry_run"],
        true
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_decision_id_of_a_403_is_in_the_decision_log_and_no_secret_is() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, "");
    assert_eq!(
        send(&tg, "GET", "/rest/api/3/issue/SUP-1", "T-log")
            .await
            .status(),
        200
    );
    let (_, body) = problem(
        send(
            &tg,
            "POST",
            "/rest/api/3/issue/SUP-1/transitions",
            "T-other",
        )
        .await,
    )
    .await;
    let id = body["decision_id"].as_str().unwrap().to_string();
    wait_until("two decision-log lines", || decisions(&tg).len() == 2);
    let lines = decisions(&tg);
    let denied = lines
        .iter()
        .find(|l| l["decision_id"] == id.as_str())
        .expect("the 403's decision id is logged");
    assert_eq!(denied["result"]["effect"], "deny");
    assert_eq!(denied["task"], "T-other");
    assert_eq!(denied["attributes"]["issue"], "SUP-1");
    assert_eq!(denied["trace_id"], body["trace_id"]);
    assert_eq!(denied["agent"], "spiffe://test/ns/a/sa/agent");
    assert_eq!(denied["policy_revision"].as_str().unwrap().len(), 16);
    let allowed = &lines[0];
    assert_eq!(allowed["credential"]["name"], "jira-token");
    assert_eq!(allowed["seq"], 1);
    let raw = std::fs::read_to_string(tg.dir.path().join("decisions.jsonl")).unwrap();
    assert!(
        !raw.contains(SECRET),
        "the secret leaked into the decision log"
    );
    assert!(
        !tg.logs().contains(SECRET),
        "the secret leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_task_applies_to_its_next_request_only() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, "");
    assert_eq!(
        send(&tg, "GET", "/rest/api/3/issue/A", "T-bad")
            .await
            .status(),
        200
    );
    let revoked = support::operator(tg.admin, "POST", "/v1/revoke", Some(r#"{"task": "T-bad"}"#));
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let (status, body) = problem(send(&tg, "GET", "/rest/api/3/issue/A", "T-bad").await).await;
    assert_eq!(
        (status, body["detail"].as_str(), body["type"].as_str()),
        (403, Some("revoked"), Some("urn:toolgate:problem:revoked"))
    );
    assert_eq!(
        send(&tg, "GET", "/rest/api/3/issue/A", "T-good")
            .await
            .status(),
        200
    );
    assert_eq!(tool.received().len(), 2);
    let listed = admin_json(&tg, "/v1/revoke");
    assert_eq!(listed["revocations"][0]["kind"], "task");
    assert_eq!(listed["revocations"][0]["id"], "T-bad");

    let bad = support::operator(tg.admin, "POST", "/v1/revoke", Some("{\"task\":1}"));
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_under_load_rejects_a_broken_policy_and_applies_a_valid_one() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, "");
    let proxy = tg.proxy_url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .proxy(reqwest::Proxy::http(proxy).unwrap())
                .build()
                .unwrap();
            let mut outcomes = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let r = client
                    .get("http://jira.test/rest/api/3/issue/A")
                    .header("x-toolgate-task", "T-load")
                    .send()
                    .await;
                outcomes.push(match r {
                    Ok(resp) => resp.status().as_u16(),
                    Err(_) => 0,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            outcomes
        })
    };
    let policy_file = tg.dir.path().join("policy/main.rego");
    std::fs::write(&policy_file, "package toolgate\n\ndecision := {\n").unwrap();
    let metrics = || http_get(tg.admin, "/metrics").unwrap().1;
    wait_until("the broken policy to be rejected", || {
        metrics().contains("toolgate_policy_reloads_total{result=\"failure\"} 1")
    });
    assert!(tg.wait_for_log("new configuration rejected"));

    let denying = POLICY.replace(
        r#"decision := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read""#,
        r#"decision := {"allow": false, "reason": "reads are paused"} if input.action.name == "ticket.read""#,
    );
    std::fs::write(&policy_file, denying).unwrap();
    let client = tg.forward_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut applied = false;
    while Instant::now() < deadline && !applied {
        let resp = client
            .get("http://jira.test/rest/api/3/issue/A")
            .send()
            .await
            .unwrap();
        applied = resp.status() == 403;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "the valid new policy never took effect");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = looping.await.unwrap();
    assert!(outcomes.len() > 20, "the loop barely ran: {outcomes:?}");
    assert!(
        outcomes.iter().all(|s| *s == 200 || *s == 403),
        "a request failed during reload: {outcomes:?}"
    );
    let first_denial = outcomes
        .iter()
        .position(|s| *s == 403)
        .unwrap_or(outcomes.len());
    assert!(
        outcomes[..first_denial].iter().all(|s| *s == 200),
        "the old policy stopped serving early"
    );
    assert!(metrics().contains("toolgate_policy_reloads_total{result=\"success\"} 1"));
}
