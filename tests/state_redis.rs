//! Tasks that span pods: two real toolgate processes sharing a real `redis-server` (Debian's,
//! one per test on a free loopback port, stopped by PID), as two sidecars of one task would.
//! Each test is written from the side that must not get through — an action taken behind the
//! other sidecar, a label set there, a revocation or approval made there, Redis gone — with
//! the legitimate request as its positive control.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{
    free_port, http_get, operator, operator_json, ToolServer, Toolgate, OPERATOR_TOKEN_FILE,
};

/// A `redis-server` of our own on a free loopback port, without persistence.
struct Redis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A redis-server with extra arguments (`--requirepass …`).
    fn start_with(args: &[&str]) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/setup.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on {}", self.port);
    }

    /// Whether it answers (a password-protected one answers NOAUTH: answering is enough).
    fn ping(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 1];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok()
    }

    /// Kill it (SIGKILL, by PID): its data is gone, as a pod's would be.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command whose answer is an integer (`EXISTS`, `PTTL`), sent as RESP.
    fn integer(&self, args: &[&str]) -> i64 {
        use std::io::{BufRead as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut command = format!("*{}\r\n", args.len());
        for a in args {
            command.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(command.as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        line.trim_end()
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{args:?} answered {line:?}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := true if input.action.name in {"ticket.read", "crm.lookup"}

# Closing needs the ticket read first in this task, by whichever agent: the reason names it.
decision := {"allow": true, "reason": sprintf("read first by %s", [e.agent])} if {
	input.action.name == "ticket.close"
	some e in input.chain
	e.action == "ticket.read"
	e.attributes.issue == input.action.attributes.issue
	e.decision == "allow"
	e.status == 200
}

# No export once the task or the agent has touched PII.
decision := {"allow": false, "reason": "pii was read in this task"} if {
	input.action.name == "report.export"
	input.task.labels.pii
}

decision := {"allow": false, "reason": "this agent read pii"} if {
	input.action.name == "report.export"
	not input.task.labels.pii
	input.agent.labels.pii
}

decision := {"allow": false, "reason": "shared state degraded: no exports"} if {
	input.action.name == "report.export"
	input.state.degraded
}

decision := true if {
	input.action.name == "report.export"
	not input.task.labels.pii
	not input.agent.labels.pii
	not input.state.degraded
}

amount := to_number(input.action.attributes.amount)

decision := true if {
	input.action.name == "payment.create"
	amount <= 100
}

decision := {"allow": true, "reason": "approved"} if {
	input.action.name == "payment.create"
	amount > 100
	input.approval.approved_by
}

decision := {"allow": false, "reason": "a payment over 100 needs a human", "approval": "required"} if {
	input.action.name == "payment.create"
	amount > 100
	amount <= 1000
	not input.approval
}

# Over 1000: the request is held open until a human decides.
decision := {"allow": false, "reason": "a payment over 1000 waits for a human", "approval": {"required": true, "wait": "20s"}} if {
	input.action.name == "payment.create"
	amount > 1000
	not input.approval
}
"#;

fn config(tool: &ToolServer, agent: &str, state: &str) -> String {
    format!(
        r#"
agent: {{ id: "{agent}" }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {upstream}
    actions:
      - name: ticket.read
        match: {{ method: GET, path: "/rest/api/3/issue/{{issue}}" }}
        attributes: {{ issue: "path:issue" }}
      - name: ticket.close
        match: {{ method: POST, path: "/rest/api/3/issue/{{issue}}/transitions" }}
        attributes: {{ issue: "path:issue" }}
  - name: crm
    hosts: [crm.test]
    upstream: {upstream}
    actions:
      - name: crm.lookup
        match: {{ method: GET, path: "/customers/{{id}}" }}
        labels: [pii]
      - name: report.export
        match: {{ method: POST, path: /reports }}
  - name: payments
    hosts: [payments.test]
    upstream: {upstream}
    actions:
      - name: payment.create
        match: {{ method: POST, path: /v1/payments }}
        attributes: {{ amount: "query:amount" }}
policy: {{ files: [policy/*.rego] }}
admin: {{ token_file: operator-token }}
limits: {{ shutdown_timeout: 1s }}
state: {state}
"#,
        upstream = tool.url(),
    )
}

/// One toolgate serving `agent`, on `redis` with `extra` state keys.
fn sidecar(tool: &ToolServer, redis: &Redis, agent: &str, extra: &str) -> Toolgate {
    let state = format!(
        "{{ backend: redis, url: \"{}\", prefix: t1, timeout: 200ms{extra} }}",
        redis.url()
    );
    Toolgate::start(
        &config(tool, agent, &state),
        &[("policy/main.rego", POLICY), OPERATOR_TOKEN_FILE],
    )
}

const AGENT_A: &str = "spiffe://test/ns/a/sa/agent-a";
const AGENT_B: &str = "spiffe://test/ns/a/sa/agent-b";

async fn send(tg: &Toolgate, method: &str, url: &str, task: &str) -> (u16, Value) {
    let resp = tg
        .forward_client()
        .request(method.parse().unwrap(), url)
        .header("x-toolgate-task", task)
        .body("")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn close_url(issue: &str) -> String {
    format!("http://jira.test/rest/api/3/issue/{issue}/transitions")
}

fn read_url(issue: &str) -> String {
    format!("http://jira.test/rest/api/3/issue/{issue}")
}

/// The decision-log lines a toolgate wrote (stdout, JSON lines), once there are `at_least`
/// (lines are written when each exchange ends, just after its answer).
fn decision_log(tg: &Toolgate, at_least: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<Value> = tg
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("decision_id").is_some())
            .collect();
        if lines.len() >= at_least || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_rule_sees_an_action_taken_through_the_other_sidecar() {
    let redis = Redis::start();
    let tool = ToolServer::http().await;
    let a = sidecar(&tool, &redis, AGENT_A, "");
    let b = sidecar(&tool, &redis, AGENT_B, "");

    // Nothing read yet: closing is refused behind either sidecar.
    assert_eq!(send(&b, "POST", &close_url("SUP-1"), "T-1").await.0, 403);
    // Agent A reads the ticket behind its own sidecar …
    assert_eq!(send(&a, "GET", &read_url("SUP-1"), "T-1").await.0, 200);
    // … and the very next decision behind B's sidecar, in the same task, sees it, with who.
    let (status, body) = send(&b, "POST", &close_url("SUP-1"), "T-1").await;
    assert_eq!(status, 200, "{body}");
    let closes: Vec<_> = tool
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(
        closes.len(),
        1,
        "exactly the allowed close reached the tool"
    );
    let b_log = decision_log(&b, 2);
    let allowed = b_log
        .iter()
        .find(|l| l["action"] == "ticket.close" && l["result"]["allow"] == true)
        .expect("B logged the allowed close");
    assert_eq!(
        allowed["result"]["reason"],
        format!("read first by {AGENT_A}")
    );

    // Another task never saw the read, nor another issue: refused (the rule is not blind).
    assert_eq!(send(&b, "POST", &close_url("SUP-1"), "T-2").await.0, 403);
    assert_eq!(send(&b, "POST", &close_url("SUP-9"), "T-1").await.0, 403);

    // Both sidecars show one chain: A's read, then B's actions, each with its agent, settled.
    let task = operator_json(a.admin, "/v1/tasks/T-1");
    let chain = task["chain"].as_array().unwrap();
    let summary: Vec<(String, String, &str, Value)> = chain
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["agent"].as_str().unwrap().to_string(),
                e["decision"].as_str().unwrap(),
                e["status"].clone(),
            )
        })
        .collect();
    // Each with its decision: appended undecided with the read, decided with the outcome
    // (an allow) or before the answer (a denial).
    assert_eq!(
        summary,
        vec![
            ("ticket.close".into(), AGENT_B.into(), "deny", json!(403)),
            ("ticket.read".into(), AGENT_A.into(), "allow", json!(200)),
            ("ticket.close".into(), AGENT_B.into(), "allow", json!(200)),
            ("ticket.close".into(), AGENT_B.into(), "deny", json!(403)),
        ]
    );
    let seqs: Vec<u64> = chain.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "one sequence across both sidecars");
    assert!(chain.iter().all(|e| e["pending"] == false));
    assert_eq!(
        operator_json(b.admin, "/v1/tasks/T-1")["chain"],
        task["chain"]
    );
}

/// A tool that holds its first request open until `release` is sent (then answers 200) and
/// answers every later one at once; it reports each request line as it arrives.
fn held_tool() -> (
    String,
    std::sync::mpsc::Sender<()>,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (seen_tx, seen) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut hold = Some(released);
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let held = hold.take();
            let seen_tx = seen_tx.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head);
                let _ = seen_tx.send(line.lines().next().unwrap_or("").to_string());
                if let Some(released) = held {
                    let _ = released.recv_timeout(Duration::from_secs(20));
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                );
            });
        }
    });
    (url, release, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_posting_in_flight_behind_one_sidecar_is_seen_by_the_next_decision_behind_the_other() {
    // A rule that allows one posting per task. The entry is appended as the chain is read
    // (one step), undecided until its outcome is written: a decision made meanwhile, behind
    // either sidecar, sees it in flight and counts it.
    const ONE_POSTING: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "one posting per task"}

decision := true if {
	input.action.name == "ledger.post"
	not posted
}

posted if {
	some e in input.chain
	e.action == "ledger.post"
	e.decision != "deny"
}
"#;
    let redis = Redis::start();
    let (upstream, release, seen) = held_tool();
    let start = |agent: &str| {
        let config = format!(
            r#"
agent: {{ id: "{agent}" }}
tools:
  - name: ledger
    hosts: [ledger.test]
    upstream: {upstream}
    actions:
      - name: ledger.post
        match: {{ method: POST, path: /postings }}
policy: {{ files: [policy/*.rego] }}
admin: {{ token_file: operator-token }}
limits: {{ shutdown_timeout: 1s }}
state: {{ backend: redis, url: "{}", prefix: t1, timeout: 200ms }}
"#,
            redis.url()
        );
        Toolgate::start(
            &config,
            &[("policy/main.rego", ONE_POSTING), OPERATOR_TOKEN_FILE],
        )
    };
    let a = start(AGENT_A);
    let b = start(AGENT_B);
    let url = "http://ledger.test/postings";

    // A's posting reaches the tool and is held there: in flight.
    let first = {
        let client = a.forward_client();
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("x-toolgate-task", "T-80")
                .body("")
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    let line = seen.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(line, "POST /postings HTTP/1.1");
    // B's shows it in flight, undecided on the shared chain …
    let chain = operator_json(b.admin, "/v1/tasks/T-80")["chain"].clone();
    assert_eq!(chain[0]["action"], "ledger.post", "{chain}");
    assert_eq!(chain[0]["agent"], AGENT_A, "{chain}");
    assert_eq!(chain[0]["pending"], true, "{chain}");
    assert_eq!(chain[0]["decision"], "pending", "{chain}");
    // … and a second posting in the task, behind B, is refused: it saw the first.
    let (status, body) = send(&b, "POST", url, "T-80").await;
    assert_eq!(
        (status, &body["detail"]),
        (403, &json!("one posting per task")),
        "{body}"
    );
    // Positive control: another task posts behind B at once.
    assert_eq!(send(&b, "POST", url, "T-81").await.0, 200);
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(5)).unwrap(),
        "POST /postings HTTP/1.1"
    );

    // Released: A's posting is answered, and its entry reads allowed, settled, everywhere.
    release.send(()).unwrap();
    let (status, body) = first.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "{}"));
    let chain = operator_json(b.admin, "/v1/tasks/T-80")["chain"].clone();
    let summary: Vec<(Value, Value, Value)> = chain
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["agent"].clone(),
                e["decision"].clone(),
                e["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(AGENT_A), json!("allow"), json!(200)),
            (json!(AGENT_B), json!("deny"), json!(403)),
        ]
    );
    assert!(
        seen.try_recv().is_err(),
        "the refused posting never reached the tool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_set_through_one_sidecar_hold_through_the_other() {
    let redis = Redis::start();
    let tool = ToolServer::http().await;
    // Two replicas of one agent.
    let a = sidecar(&tool, &redis, AGENT_A, "");
    let b = sidecar(&tool, &redis, AGENT_A, "");

    // Positive control: before any PII, exporting is allowed behind B.
    assert_eq!(
        send(&b, "POST", "http://crm.test/reports", "T-5").await.0,
        200
    );
    // The lookup behind A labels its task and its agent `pii`.
    assert_eq!(
        send(&a, "GET", "http://crm.test/customers/7", "T-6")
            .await
            .0,
        200
    );
    let (status, body) = send(&b, "POST", "http://crm.test/reports", "T-6").await;
    assert_eq!(
        (status, body["detail"].clone()),
        (403, json!("pii was read in this task"))
    );
    // A fresh task does not escape it: the agent's label holds, through the other replica.
    let (status, body) = send(&b, "POST", "http://crm.test/reports", "T-7").await;
    assert_eq!(
        (status, body["detail"].clone()),
        (403, json!("this agent read pii"))
    );
    let labels = &operator_json(b.admin, "/v1/tasks/T-6")["pools"]["named"]["labels"];
    assert_eq!(labels["pii"]["by"], "crm.lookup");
    let exports = tool
        .received()
        .into_iter()
        .filter(|r| r.target == "/reports")
        .count();
    assert_eq!(
        exports, 1,
        "only the export before the lookup reached the tool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_through_one_sidecar_refuses_within_a_second_through_the_other() {
    let redis = Redis::start();
    let tool = ToolServer::http().await;
    let a = sidecar(&tool, &redis, AGENT_A, "");
    let b = sidecar(&tool, &redis, AGENT_B, "");
    assert_eq!(send(&b, "GET", &read_url("SUP-2"), "T-9").await.0, 200);

    let revoked = operator(
        a.admin,
        "POST",
        "/v1/revoke",
        Some(r#"{"task": "T-9", "ttl": "1h"}"#),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let at = Instant::now();
    let (status, body) = send(&b, "GET", &read_url("SUP-2"), "T-9").await;
    assert_eq!((status, body["detail"].clone()), (403, json!("revoked")));
    assert!(at.elapsed() < Duration::from_secs(1), "{:?}", at.elapsed());
    // Listed on both; another task still served behind B (positive control).
    for tg in [&a, &b] {
        let list = operator_json(tg.admin, "/v1/revoke");
        assert_eq!(list["revocations"][0]["id"], "T-9", "{list}");
    }
    assert_eq!(send(&b, "GET", &read_url("SUP-2"), "T-10").await.0, 200);
    // The agent cannot shorten it from the other side either.
    let shorter = operator(
        b.admin,
        "POST",
        "/v1/revoke",
        Some(r#"{"task": "T-9", "ttl": "1s"}"#),
    );
    assert_eq!(shorter.json()["changed"], false, "{}", shorter.body);
    // An agent revocation stops that agent behind every sidecar, and only it.
    let agent = format!(r#"{{"agent": "{AGENT_B}", "ttl": "1h"}}"#);
    assert_eq!(
        operator(a.admin, "POST", "/v1/revoke", Some(&agent)).status,
        200
    );
    assert_eq!(send(&b, "GET", &read_url("SUP-3"), "T-11").await.0, 403);
    assert_eq!(send(&a, "GET", &read_url("SUP-3"), "T-11").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_ended_through_one_sidecar_is_refused_through_the_other_even_without_redis() {
    let mut redis = Redis::start();
    let tool = ToolServer::http().await;
    let a = sidecar(&tool, &redis, AGENT_A, ", on_unavailable: local");
    let b = sidecar(&tool, &redis, AGENT_B, ", on_unavailable: local");
    assert_eq!(send(&b, "GET", &read_url("SUP-4"), "T-50").await.0, 200);

    let ended = operator(
        a.admin,
        "POST",
        "/v1/tasks/T-50/end",
        Some(r#"{"by": "orchestrator", "reason": "done"}"#),
    );
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.json()["changed"], true, "{}", ended.body);
    // The very next decision behind B refuses the task: the end is read with the chain.
    let (status, body) = send(&b, "GET", &read_url("SUP-4"), "T-50").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:toolgate:problem:task-ended");
    assert!(
        body["detail"].as_str().unwrap().contains("orchestrator"),
        "{body}"
    );
    // Ending it again through B changes nothing: the first end stands, everywhere.
    let again = operator(b.admin, "POST", "/v1/tasks/T-50/end", Some("{}"));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["changed"], false, "{}", again.body);
    assert_eq!(again.json()["ended"]["by"], "orchestrator");
    // B shows the end and the chain it ended with; the feed lists it.
    let shown = operator_json(b.admin, "/v1/tasks/T-50");
    assert_eq!(shown["ended"]["by"], "orchestrator", "{shown}");
    assert_eq!(shown["ended"]["chain_kept"], true, "{shown}");
    assert_eq!(shown["chain"][0]["action"], "ticket.read", "{shown}");
    let feed = operator_json(b.admin, "/v1/revocations/feed");
    assert_eq!(feed["ended_tasks"][0]["id"], "T-50", "{feed}");
    // Positive control: another task goes on behind both.
    assert_eq!(send(&b, "GET", &read_url("SUP-4"), "T-51").await.0, 200);
    assert_eq!(send(&a, "GET", &read_url("SUP-4"), "T-51").await.0, 200);

    // B copies ends every 250 ms: with Redis gone, its local view still refuses the task.
    std::thread::sleep(Duration::from_millis(800));
    redis.kill();
    let (status, body) = send(&b, "GET", &read_url("SUP-5"), "T-50").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:toolgate:problem:task-ended");
    assert_eq!(
        send(&b, "GET", &read_url("SUP-5"), "T-52").await.0,
        200,
        "other tasks are decided on the local view"
    );
    // Redis returns empty: the end is written back, and A refuses the task again.
    redis.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = send(&a, "GET", &read_url("SUP-6"), "T-50").await;
        if status == 403 && body["type"] == "urn:toolgate:problem:task-ended" {
            let list = operator_json(a.admin, "/v1/revocations/feed");
            if list["ended_tasks"][0]["id"] == "T-50" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the end was not written back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reads = tool
        .received()
        .into_iter()
        .filter(|r| r.target.ends_with("SUP-4") || r.target.ends_with("SUP-5"))
        .count();
    assert_eq!(
        reads, 4,
        "only the reads outside the ended task reached the tool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_granted_through_one_sidecar_releases_the_retry_through_the_other_once() {
    let redis = Redis::start();
    let tool = ToolServer::http().await;
    let a = sidecar(&tool, &redis, AGENT_A, "");
    let b = sidecar(&tool, &redis, AGENT_A, "");
    let pay = "http://payments.test/v1/payments?amount=250";

    // Positive control: a small payment goes straight out.
    assert_eq!(
        send(
            &a,
            "POST",
            "http://payments.test/v1/payments?amount=5",
            "T-20"
        )
        .await
        .0,
        200
    );
    let (status, held) = send(&a, "POST", pay, "T-20").await;
    assert_eq!(status, 403, "{held}");
    assert_eq!(held["type"], "urn:toolgate:problem:approval-required");
    let id = held["approval_id"].as_str().unwrap().to_string();
    // B lists it (it lives in Redis) and a human approves it there.
    let listed = operator_json(b.admin, "/v1/approvals");
    assert_eq!(listed["approvals"][0]["id"], id.as_str());
    let approved = operator(
        b.admin,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(r#"{"approver": "alice@example.com"}"#),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    // The identical retry behind B — at once, before any background refresh — goes out.
    let (status, body) = send(&b, "POST", pay, "T-20").await;
    assert_eq!(status, 200, "{body}");
    // Once: the same retry behind A is refused, whichever sidecar it reaches.
    let (status, again) = send(&a, "POST", pay, "T-20").await;
    assert_eq!(status, 403, "{again}");
    let payments = tool
        .received()
        .into_iter()
        .filter(|r| r.target.contains("amount=250"))
        .count();
    assert_eq!(
        payments, 1,
        "the approved payment reached the tool exactly once"
    );
    let shown = operator_json(a.admin, &format!("/v1/approvals/{id}"));
    assert_eq!(shown["status"], "consumed");
    assert_eq!(shown["decided_by"], "alice@example.com");
}

/// Send `n` reads behind `tg` in task `task`; the statuses.
async fn reads(tg: &Toolgate, task: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            send(tg, "GET", &read_url(&format!("SUP-{i}")), task)
                .await
                .0,
        );
    }
    out
}

fn metric(tg: &Toolgate, line_start: &str) -> f64 {
    let (_, text) = http_get(tg.admin, "/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line_start} not in metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_gone_refuses_with_state_unavailable_and_service_resumes_with_every_decision_logged()
{
    let mut redis = Redis::start();
    let tool = ToolServer::http().await;
    let a = sidecar(&tool, &redis, AGENT_A, "");
    assert_eq!(reads(&a, "T-30", 2).await, [200, 200]);
    // The operator API has its own connection too, open when Redis goes.
    assert_eq!(operator(a.admin, "GET", "/v1/tasks/T-30", None).status, 200);

    redis.kill();
    let (status, body) = send(&a, "GET", &read_url("SUP-1"), "T-30").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "urn:toolgate:problem:state-unavailable");
    assert!(body["detail"].as_str().unwrap().contains("Redis"), "{body}");
    let refused_id = body["decision_id"].as_str().unwrap().to_string();
    assert_eq!(reads(&a, "T-31", 2).await, [503, 503]);
    let (ready, text) = http_get(a.admin, "/readyz").unwrap();
    assert_eq!(ready, 503, "{text}");
    assert!(text.contains("state redis unavailable"), "{text}");
    assert!(metric(&a, "toolgate_state_errors_total{op=\"observe\"}") >= 3.0);
    assert_eq!(
        metric(&a, "toolgate_state_available{backend=\"redis\"}"),
        0.0
    );

    // Redis returns (empty: it had no persistence): toolgate reconnects on its own.
    redis.spawn();
    let mut unavailable = 3;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match send(&a, "GET", &read_url("SUP-1"), "T-32").await.0 {
            200 => break,
            503 => unavailable += 1,
            other => panic!("{other}"),
        }
        assert!(Instant::now() < deadline, "service did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(a.admin, "/readyz").unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "not ready again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&a, "toolgate_state_available{backend=\"redis\"}"),
        1.0
    );
    // Once ready, every thread is served again — each request a new connection, spread over
    // the workers, and the operator API — none refused on an error left from the outage.
    assert_eq!(reads(&a, "T-33", 8).await, [200; 8]);
    let task = operator(a.admin, "GET", "/v1/tasks/T-33", None);
    assert_eq!(task.status, 200, "{}", task.body);

    // Nothing lost from the decision log: every request, refused or not, has its line.
    let sent = tool.received().len();
    let log = decision_log(&a, sent + unavailable);
    let refused = log.iter().filter(|l| l["outcome"]["status"] == 503).count();
    assert_eq!(refused, unavailable, "{log:#?}");
    assert!(log.iter().any(|l| l["decision_id"] == refused_id.as_str()));
    let served = log.iter().filter(|l| l["outcome"]["status"] == 200).count();
    assert_eq!(served, sent, "one line per request that reached the tool");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_mode_decides_on_its_own_view_flagged_degraded_and_keeps_revocations() {
    let mut redis = Redis::start();
    let tool = ToolServer::http().await;
    let a = sidecar(&tool, &redis, AGENT_A, ", on_unavailable: local");
    let b = sidecar(&tool, &redis, AGENT_B, ", on_unavailable: local");
    // Positive control while Redis answers: exports are allowed.
    assert_eq!(
        send(&b, "POST", "http://crm.test/reports", "T-40").await.0,
        200
    );
    let revoked = operator(
        a.admin,
        "POST",
        "/v1/revoke",
        Some(r#"{"task": "T-41", "ttl": "1h"}"#),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    // B copies revocations every 250 ms: long enough for it to hold its own copy.
    std::thread::sleep(Duration::from_millis(800));

    redis.kill();
    // Reads go on, decided on the local view; the degraded flag reaches policy.
    assert_eq!(reads(&b, "T-40", 2).await, [200, 200]);
    let (status, body) = send(&b, "POST", "http://crm.test/reports", "T-40").await;
    assert_eq!(
        (status, body["detail"].clone()),
        (403, json!("shared state degraded: no exports"))
    );
    // The revocation made through A before Redis went away still holds behind B.
    let (status, body) = send(&b, "GET", &read_url("SUP-1"), "T-41").await;
    assert_eq!((status, body["detail"].clone()), (403, json!("revoked")));
    let (ready, text) = http_get(b.admin, "/readyz").unwrap();
    assert_eq!(ready, 200, "{text}");
    assert!(text.contains("degraded"), "{text}");
    assert!(metric(&b, "toolgate_state_degraded_total") >= 4.0);

    redis.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if send(&b, "POST", "http://crm.test/reports", "T-42").await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "exports did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redis came back empty; B wrote back the revocation it held, so it lapsed nowhere.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list = operator(a.admin, "GET", "/v1/revoke", None);
        if list.status == 200 && list.json()["revocations"][0]["id"] == "T-41" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revocation not restored: {}",
            list.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(send(&a, "GET", &read_url("SUP-1"), "T-41").await.0, 403);
    // Every decision, degraded or not, is in the log.
    let log = decision_log(&b, 6);
    assert!(log.len() >= 6, "{log:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn default_tasks_are_shared_by_replicas_of_one_agent() {
    let redis = Redis::start();
    let tool = ToolServer::http().await;
    let a = sidecar(&tool, &redis, AGENT_A, "");
    let b = sidecar(&tool, &redis, AGENT_A, "");
    let client = |tg: &Toolgate| tg.forward_client();
    // No task named: both replicas' requests join the agent's one default task.
    let r = client(&a).get(read_url("SUP-1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client(&b)
        .post(close_url("SUP-1"))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the read behind A is in B's default task");
    let chain = &operator_json(a.admin, "/v1/tasks/default-1")["chain"];
    assert_eq!(chain.as_array().map(Vec::len), Some(2), "{chain}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_held_open_behind_one_sidecar_goes_out_once_approved_through_the_other() {
    let redis = Redis::start();
    let tool = ToolServer::http().await;
    let a = sidecar(&tool, &redis, AGENT_A, "");
    let b = sidecar(&tool, &redis, AGENT_A, "");
    let client = a.forward_client();
    let held = tokio::spawn(async move {
        let resp = client
            .post("http://payments.test/v1/payments?amount=5000")
            .header("x-toolgate-task", "T-50")
            .body("")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), Instant::now())
    });
    // The approval appears behind B; nothing has reached the tool yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let listed = operator_json(b.admin, "/v1/approvals");
        if let Some(id) = listed["approvals"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no approval listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(tool.received().is_empty());
    let approved = operator(
        b.admin,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(r#"{"approver": "bob@example.com"}"#),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    let at = Instant::now();
    let (status, released) = held.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        released.duration_since(at) < Duration::from_secs(1),
        "released {:?} after the approval",
        released.duration_since(at)
    );
    assert_eq!(tool.received().len(), 1, "it went out once");
}

fn with_password(tool: &ToolServer, redis: &Redis, password: &str) -> Toolgate {
    let state = format!(
        "{{ backend: redis, url: \"{}\", password_file: redis-password, prefix: t2, on_unavailable: local }}",
        redis.url()
    );
    Toolgate::start(
        &config(tool, AGENT_A, &state),
        &[
            ("policy/main.rego", POLICY),
            OPERATOR_TOKEN_FILE,
            ("redis-password", &format!("{password}\n")),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_from_a_file_reaches_a_protected_redis_and_a_wrong_one_is_never_printed() {
    let redis = Redis::start_with(&["--requirepass", "s3cret-redis-pw"]);
    let tool = ToolServer::http().await;
    let good = with_password(&tool, &redis, "s3cret-redis-pw");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !http_get(good.admin, "/readyz")
        .unwrap()
        .1
        .contains("state redis available")
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            http_get(good.admin, "/readyz")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Served from Redis: the export is allowed, not degraded.
    assert_eq!(
        send(&good, "POST", "http://crm.test/reports", "T-60")
            .await
            .0,
        200
    );

    let bad = with_password(&tool, &redis, "not-the-password");
    let (status, body) = send(&bad, "POST", "http://crm.test/reports", "T-61").await;
    assert_eq!(
        (status, body["detail"].clone()),
        (403, json!("shared state degraded: no exports"))
    );
    let (_, ready) = http_get(bad.admin, "/readyz").unwrap();
    assert!(ready.contains("state redis unavailable"), "{ready}");
    let logs = bad.logs();
    for text in [&ready, &logs] {
        assert!(
            !text.contains("not-the-password") && !text.contains("s3cret-redis-pw"),
            "{text}"
        );
    }
}

/// A task's keys in Redis: meta, chain, labels (prefix `t1`, named pool).
fn task_keys(task: &str) -> [String; 3] {
    ["tm", "tc", "tl"].map(|kind| format!("t1:{kind}:n:{task}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_lives_its_idle_ttl_after_its_last_action_and_then_leaves_redis() {
    let redis = Redis::start();
    let tool = ToolServer::http().await;
    let state = format!(
        "{{ backend: redis, url: \"{}\", prefix: t1, timeout: 200ms, max_tasks: 2 }}\nchain: {{ idle_ttl: 2s, agent_label_ttl: 2s }}",
        redis.url()
    );
    let a = Toolgate::start(
        &config(&tool, AGENT_A, &state),
        &[("policy/main.rego", POLICY), OPERATOR_TOKEN_FILE],
    );
    let ttl_ms = 2000;

    // The lookup labels the task (its labels key exists); reads follow back to back, so some
    // appends do not refresh expiries. Every key still lives its TTL after the last action.
    assert_eq!(
        send(&a, "GET", "http://crm.test/customers/7", "T-50")
            .await
            .0,
        200
    );
    for _ in 0..3 {
        let sent = Instant::now();
        assert_eq!(send(&a, "GET", &read_url("SUP-50"), "T-50").await.0, 200);
        for key in task_keys("T-50") {
            let pttl = redis.integer(&["PTTL", &key]);
            let floor = ttl_ms - i64::try_from(sent.elapsed().as_millis()).unwrap();
            assert!(
                pttl >= floor && pttl <= ttl_ms + 1000,
                "{key} expires in {pttl} ms: it must outlive the last action by the TTL ({floor} ms left of it)"
            );
        }
    }
    // The task's own rule still sees its label through the whole sequence (nothing expired).
    let (status, body) = send(&a, "POST", "http://crm.test/reports", "T-50").await;
    assert_eq!(
        (status, body["detail"].clone()),
        (403, json!("pii was read in this task"))
    );

    // A crowded pool evicts its least recently used task: T-50 goes when two others come.
    assert_eq!(send(&a, "GET", &read_url("SUP-51"), "T-51").await.0, 200);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(send(&a, "GET", &read_url("SUP-52"), "T-52").await.0, 200);
    for key in task_keys("T-50") {
        assert_eq!(redis.integer(&["EXISTS", &key]), 0, "{key} evicted");
    }
    // Positive control: the two recent tasks are kept.
    for task in ["T-51", "T-52"] {
        assert_eq!(
            redis.integer(&["EXISTS", &task_keys(task)[1]]),
            1,
            "{task} kept"
        );
    }

    // Idle past its TTL (and the refresh period), a task leaves Redis by itself.
    std::thread::sleep(Duration::from_millis(u64::try_from(ttl_ms).unwrap() + 1200));
    for task in ["T-51", "T-52"] {
        for key in task_keys(task) {
            assert_eq!(redis.integer(&["EXISTS", &key]), 0, "{key} expired");
        }
    }
}
