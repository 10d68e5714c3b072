//! Recorded decisions, decided again: a decision log recorded by the real binary (with
//! `decision_log: { input: true }`) replayed through the unchanged and a changed policy with
//! `toolgate replay`, and one decision followed to everything about it with `toolgate
//! explain`. The recorded inputs never hold a credential.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{problem, ToolServer, Toolgate};

const JIRA_SECRET: &str = "jira-secret-value-0d7e";
const PAYMENTS_SECRET: &str = "payments-secret-value-a41f";
const ADMIN_SECRET: &str = "payments-admin-value-73c9";
const AGENT_TOKEN: &str = "agent-own-token-6f21";
const AGENT_COOKIE: &str = "agent-session-88e0";

/// Reads are allowed; a transition needs a successful read of the ticket in the same task;
/// payments up to 100.
const LIVE: &str = r#"package toolgate
import data.toolgate.lib
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if {
	input.action.name == "ticket.read"
}

decision := {"allow": true, "reason": "read earlier in this task"} if {
	input.action.name == "ticket.transition"
	lib.done_in_task("ticket.read", {"issue": input.action.attributes.issue})
}

decision := {"allow": true, "reason": "within the limit"} if {
	input.action.name == "payment.create"
	to_number(input.action.attributes.amount) <= 100
}

decision := {"allow": false, "reason": "a human must approve it", "approval": "required"} if {
	input.action.name == "payment.create"
	to_number(input.action.attributes.amount) > 1000
}

decision := {"allow": true, "reason": "ledger entries are allowed"} if input.action.name == "entry.create"
"#;

/// The candidate: SUP-1 may no longer be read, and payments go out with the admin key.
fn candidate() -> String {
    LIVE.replace(
        "\tinput.action.name == \"ticket.read\"\n}",
        "\tinput.action.name == \"ticket.read\"\n\tinput.action.attributes.issue != \"SUP-1\"\n}",
    )
    .replace(
        r#"{"allow": true, "reason": "within the limit"}"#,
        r#"{"allow": true, "reason": "within the limit", "credential": {"name": "payments-admin"}}"#,
    )
}

fn config(upstream: &str) -> String {
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
  - name: payments
    hosts: [payments.test]
    upstream: {upstream}
    credential: payments-key
    actions:
      - name: payment.create
        match: {{ method: POST, path: /v1/payments }}
        attributes: {{ amount: "query:amount" }}
  - name: ledger
    hosts: [ledger.test]
    upstream: {upstream}
    credential: ledger-jwt
    actions:
      - name: entry.create
        match: {{ method: POST, path: /v1/entries }}
policy: {{ files: [policy/live.rego], shadow: {{ files: [candidate/*.rego] }} }}
credentials:
  jira-token: {{ kind: secret, file: secrets/jira, header: Authorization, format: "Bearer {{}}" }}
  payments-key: {{ kind: secret, file: secrets/payments, query: api_key }}
  payments-admin: {{ kind: secret, file: secrets/admin, query: api_key }}
  ledger-jwt: {{ kind: jwt, audience: ledger.test, key_file: keys/signing.pem, max_ttl: 60s }}
telemetry: {{ decision_log: {{ sink: decisions.jsonl, input: true }} }}
limits: {{ shutdown_timeout: 1s }}
"#
    )
}

/// The recorded run: a toolgate serving the live policy with the candidate as its shadow.
struct Run {
    tg: Toolgate,
    _tool: ToolServer,
}

impl Run {
    fn path(&self, p: &str) -> std::path::PathBuf {
        self.tg.dir.path().join(p)
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("decisions.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The live decision line of `task` at `seq`.
    fn line(&self, task: &str, seq: u64) -> Value {
        self.lines()
            .into_iter()
            .find(|l| l["task"] == task && l["seq"] == seq && l.get("shadow").is_none())
            .unwrap()
    }

    fn toolgate(&self, args: &[&str]) -> Output {
        Command::new(support::binary())
            .args(args)
            .current_dir(self.tg.dir.path())
            .output()
            .unwrap()
    }
}

async fn record() -> Run {
    let tool = ToolServer::http().await;
    let signing = toolgate_policy::config::generate_ed25519_pem().unwrap();
    let tg = Toolgate::start(
        &config(&tool.url()),
        &[
            ("policy/live.rego", LIVE),
            ("candidate/main.rego", &candidate()),
            ("secrets/jira", JIRA_SECRET),
            ("secrets/payments", PAYMENTS_SECRET),
            ("secrets/admin", ADMIN_SECRET),
            ("keys/signing.pem", &signing),
        ],
    );
    let client = tg.forward_client();
    let send = |method: &str, url: &str, task: &str| {
        client
            .request(method.parse().unwrap(), url)
            .header("x-toolgate-task", task)
            // The agent's own credentials: never recorded.
            .header("authorization", format!("Bearer {AGENT_TOKEN}"))
            .header("cookie", format!("session={AGENT_COOKIE}"))
            .send()
    };
    let jira = "http://jira.test/rest/api/3/issue";
    // T-1: read SUP-1, transition it (the chain rule holds), read SUP-2.
    assert_eq!(
        send("GET", &format!("{jira}/SUP-1"), "T-1")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send("POST", &format!("{jira}/SUP-1/transitions"), "T-1")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send("GET", &format!("{jira}/SUP-2"), "T-1")
            .await
            .unwrap()
            .status(),
        200
    );
    // T-2: a transition of an unread ticket (denied), a payment within the limit (the agent
    // sends its own api_key, which the injected one replaces), one over it.
    let (status, _) = problem(
        send("POST", &format!("{jira}/SUP-4/transitions"), "T-2")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    let pay = "http://payments.test/v1/payments";
    assert_eq!(
        send(
            "POST",
            &format!("{pay}?amount=50&api_key={AGENT_TOKEN}"),
            "T-2"
        )
        .await
        .unwrap()
        .status(),
        200
    );
    assert_eq!(
        problem(
            send("POST", &format!("{pay}?amount=500"), "T-2")
                .await
                .unwrap()
        )
        .await
        .0,
        403
    );
    // One held for a human, and a ledger entry with a minted JWT.
    let (status, held) = problem(
        send("POST", &format!("{pay}?amount=5000"), "T-2")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, held["type"].as_str()),
        (403, Some("urn:toolgate:problem:approval-required"))
    );
    assert_eq!(
        send("POST", "http://ledger.test/v1/entries", "T-2")
            .await
            .unwrap()
            .status(),
        200
    );
    let run = Run { tg, _tool: tool };
    // Eight decisions, two of them with a shadow line (the read of SUP-1, the payment).
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.lines().len() < 10 {
        assert!(
            Instant::now() < deadline,
            "decision log: {:#?}",
            run.lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_recorded_inputs_hold_no_credential_and_replay_whole() {
    let run = record().await;
    let raw = std::fs::read_to_string(run.path("decisions.jsonl")).unwrap();
    for secret in [
        JIRA_SECRET,
        PAYMENTS_SECRET,
        ADMIN_SECRET,
        AGENT_TOKEN,
        AGENT_COOKIE,
    ] {
        assert!(!raw.contains(secret), "{secret} is in the decision log");
    }
    // The positive control: the inputs are there, whole.
    let read = run.line("T-1", 1);
    assert_eq!(read["input"]["action"]["attributes"]["issue"], "SUP-1");
    assert_eq!(read["input"]["request"]["path"], "/rest/api/3/issue/SUP-1");
    assert_eq!(read["input"]["task"]["id"], "T-1");
    assert!(read["input"]["request"]["headers"]
        .get("authorization")
        .is_none());
    assert!(read["input"]["request"]["headers"].get("cookie").is_none());
    assert_eq!(read["decision"]["effect"], "allow");
    assert_eq!(read["decision"]["credential"]["name"], "jira-token");
    let pay = run.line("T-2", 2);
    assert_eq!(pay["input"]["request"]["query"]["amount"], "50");
    assert!(pay["input"]["request"]["query"].get("api_key").is_none());
    let moved = run.line("T-1", 2);
    assert_eq!(moved["input"]["chain"][0]["action"], "ticket.read");
    assert_eq!(moved["input"]["chain"][0]["status"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_reports_exactly_the_changed_decisions_and_nothing_for_the_unchanged_policy() {
    let run = record().await;

    // The live policy itself: nothing changes, exit 0.
    let same = run.toolgate(&[
        "replay",
        "-c",
        "toolgate.yaml",
        "--policy",
        "policy/live.rego",
        "decisions.jsonl",
    ]);
    let text = stdout(&same);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&same.stderr)
    );
    assert!(
        text.starts_with("replayed 8 decisions of 2 tasks"),
        "{text}"
    );
    assert!(text.contains("no decision changes"), "{text}");
    assert!(!text.contains("depend on history"), "{text}");

    // The candidate (the configured shadow, by default): exactly the read of SUP-1 is newly
    // denied and the payment goes out with another credential; exit 1.
    let changed = run.toolgate(&["replay", "-c", "toolgate.yaml", "--json", "decisions.jsonl"]);
    assert_eq!(
        changed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    let report: Value = serde_json::from_slice(&changed.stdout).unwrap();
    assert_eq!(report["replayed"], 8);
    assert_eq!(report["skipped"]["shadow_lines"], 2);
    let changes: Vec<(String, String, u64, String, String, String)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_string(),
                c["task"].as_str().unwrap().to_string(),
                c["seq"].as_u64().unwrap(),
                c["action"].as_str().unwrap().to_string(),
                c["decision_id"].as_str().unwrap().to_string(),
                c["trace_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let read = run.line("T-1", 1);
    let pay = run.line("T-2", 2);
    let id = |l: &Value, k: &str| l[k].as_str().unwrap().to_string();
    assert_eq!(
        changes,
        [
            (
                "newly_denied".into(),
                "T-1".into(),
                1,
                "ticket.read".into(),
                id(&read, "decision_id"),
                id(&read, "trace_id")
            ),
            (
                "changed_credential".into(),
                "T-2".into(),
                2,
                "payment.create".into(),
                id(&pay, "decision_id"),
                id(&pay, "trace_id")
            ),
        ]
    );
    assert_eq!(
        report["changes"][1]["recorded"]["credential"]["name"],
        "payments-key"
    );
    assert_eq!(
        report["changes"][1]["candidate"]["credential"]["name"],
        "payments-admin"
    );
    assert_eq!(
        report["actions"]["ticket.read"],
        serde_json::json!({"unchanged": 1, "newly_denied": 1, "newly_allowed": 0, "changed_credential": 0, "changed": 0})
    );
    assert_eq!(report["actions"]["ticket.transition"]["unchanged"], 2);
    assert_eq!(report["actions"]["payment.create"]["unchanged"], 2);
    assert_eq!(report["actions"]["entry.create"]["unchanged"], 1);
    // The chain rule: as recorded, SUP-1's transition saw a successful read and stays
    // allowed; with the candidate's own history (the read refused) it would be denied.
    let history = report["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{history:#?}");
    let moved = run.line("T-1", 2);
    assert_eq!(history[0]["decision_id"], moved["decision_id"]);
    assert_eq!(history[0]["changed_before"], serde_json::json!([1]));
    assert_eq!(history[0]["as_recorded"]["effect"], "allow");
    assert_eq!(history[0]["with_candidate_history"]["effect"], "deny");

    // The same as text, naming each change's decision and trace.
    let text = run.toolgate(&[
        "replay",
        "-c",
        "toolgate.yaml",
        "--policy",
        "candidate",
        "decisions.jsonl",
    ]);
    assert_eq!(text.status.code(), Some(1));
    let text = stdout(&text);
    assert!(
        text.contains(&format!(
            "newly denied  ticket.read  task T-1 seq 1  decision {}  trace {}",
            id(&read, "decision_id"),
            id(&read, "trace_id")
        )),
        "{text}"
    );
    assert!(
        text.contains("1 decisions depend on history the candidate changed"),
        "{text}"
    );
}

#[test]
fn replay_refuses_what_it_cannot_use_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    support::write(dir.path(), "policy/live.rego", LIVE);
    support::write(dir.path(), "candidate/main.rego", &candidate());
    for (f, s) in [
        ("jira", JIRA_SECRET),
        ("payments", PAYMENTS_SECRET),
        ("admin", ADMIN_SECRET),
    ] {
        support::write(dir.path(), &format!("secrets/{f}"), s);
    }
    support::write(
        dir.path(),
        "keys/signing.pem",
        &toolgate_policy::config::generate_ed25519_pem().unwrap(),
    );
    support::write(dir.path(), "toolgate.yaml", &config("http://127.0.0.1:9"));
    support::write(
        dir.path(),
        "old.jsonl",
        "{\"decision_id\":\"x\",\"task\":\"T\",\"seq\":1,\"result\":{\"allow\":true}}\n",
    );
    support::write(
        dir.path(),
        "broken.jsonl",
        "{\"decision_id\":\"x\"}\nnot json\n",
    );
    let run = |args: &[&str], dir: &Path| {
        Command::new(support::binary())
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap()
    };
    for (args, says) in [
        (
            vec!["replay", "-c", "toolgate.yaml", "old.jsonl"],
            "no decision with a recorded input in old.jsonl (1 lines without one)",
        ),
        (
            vec!["replay", "-c", "toolgate.yaml", "broken.jsonl"],
            "broken.jsonl:2: not a decision-log line",
        ),
        (
            vec![
                "replay",
                "-c",
                "toolgate.yaml",
                "--policy",
                "nowhere/*.rego",
                "old.jsonl",
            ],
            "--policy \"nowhere/*.rego\" names no Rego file",
        ),
        (
            vec!["replay", "-c", "toolgate.yaml", "missing.jsonl"],
            "missing.jsonl: ",
        ),
    ] {
        let out = run(&args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_leads_from_a_decision_id_to_its_rule_chain_trace_credential_and_approval() {
    let run = record().await;
    let explain = |id: &str| {
        let out = run.toolgate(&[
            "explain",
            "-c",
            "toolgate.yaml",
            "--log",
            "decisions.jsonl",
            id,
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    };
    let line_of = |needle: &str| LIVE.lines().position(|l| l.contains(needle)).unwrap() + 1;

    // The transition allowed by the chain rule: the rule that held, and the read it saw.
    let moved = run.line("T-1", 2);
    let id = moved["decision_id"].as_str().unwrap();
    let text = explain(id);
    for want in [
        format!("decision  {id}"),
        "task      T-1  seq 2".to_string(),
        "decided   allow: read earlier in this task".to_string(),
        "outcome   response 200".to_string(),
        "credential jira-token (secret), id (jti) -".to_string(),
        format!(
            "trace     {}  span {}",
            moved["trace_id"].as_str().unwrap(),
            moved["span_id"].as_str().unwrap()
        ),
        ", the policy that decided):".to_string(),
        format!(
            "  policy/live.rego:{}  decision := {{\"allow\": true, \"reason\": \"read earlier in this task\"}} if {{  [rule]",
            line_of("read earlier in this task")
        ),
        "chain it saw (1 earlier actions):".to_string(),
        "  seq 1  ticket.read  allow  response 200  {\"issue\":\"SUP-1\"}".to_string(),
        "\"path\": \"/rest/api/3/issue/SUP-1/transitions\"".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains("shadow    "), "the shadow agreed: {text}");

    // A minted JWT: its jti, as the log recorded it.
    let entry = run.line("T-2", 5);
    let jti = entry["credential"]["id"].as_str().unwrap();
    assert_eq!(entry["credential"]["kind"], "jwt");
    let text = explain(entry["decision_id"].as_str().unwrap());
    assert!(
        text.contains(&format!("credential ledger-jwt (jwt), id (jti) {jti}")),
        "{text}"
    );

    // Held for approval: the approval's id and status.
    let held = run.line("T-2", 4);
    let approval = held["approval"]["id"].as_str().unwrap();
    let text = explain(held["decision_id"].as_str().unwrap());
    assert!(
        text.contains(&format!("approval  {approval} pending")),
        "{text}"
    );
    assert!(
        text.contains("decided   deny: a human must approve it"),
        "{text}"
    );

    // Where the shadow disagreed: its decision beside the live one; the agent's own api_key
    // never reached the input, and nothing secret is printed.
    let pay = run.line("T-2", 2);
    let text = explain(pay["decision_id"].as_str().unwrap());
    assert!(
        text.contains("shadow    allow: within the limit  (differs: credential;"),
        "{text}"
    );
    for secret in [PAYMENTS_SECRET, ADMIN_SECRET, AGENT_TOKEN, AGENT_COOKIE] {
        assert!(!text.contains(secret), "{secret} printed");
    }

    // --json carries the same, for machines; an unknown id is exit 1.
    let out = run.toolgate(&[
        "explain",
        "-c",
        "toolgate.yaml",
        "--log",
        "decisions.jsonl",
        "--json",
        id,
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["decision"]["decision_id"], id);
    assert_eq!(doc["rule"]["produced_by"][0]["file"], "policy/live.rego");
    assert_eq!(doc["rule"]["same_decision"], true);
    let missing = run.toolgate(&[
        "explain",
        "-c",
        "toolgate.yaml",
        "--log",
        "decisions.jsonl",
        "no-such-id",
    ]);
    assert_eq!(missing.status.code(), Some(1));
}
