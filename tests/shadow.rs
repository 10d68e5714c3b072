//! The shadow policy (`policy.shadow`) end to end: the real binary decides with the live policy
//! and the shadow beside it; what is forwarded follows the live policy alone, and exactly the
//! requests the two decide differently show up as shadow lines in the decision log, in
//! `toolgate_shadow_disagreements_total` and on the action's span. Hot reload swaps them
//! independently, and promoting the shadow is a config change.
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

use otlp::{int, string, Receiver};
use serde_json::Value;
use support::{http_get, problem, ToolServer, Toolgate};

const SECRET: &str = "jira-secret-value-5b0c";

/// Reads are allowed; a transition needs a successful read of the ticket in the task.
const LIVE: &str = r#"
package toolgate
import data.toolgate.lib
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read"

decision := {"allow": true, "reason": "read earlier in this task"} if {
	input.action.name == "ticket.transition"
	lib.done_in_task("ticket.read", {"issue": input.action.attributes.issue})
}

decision := {"allow": false, "reason": "read it first"} if {
	input.action.name == "ticket.transition"
	not lib.done_in_task("ticket.read", {"issue": input.action.attributes.issue})
}
"#;

/// The candidate: the same, but stricter on one action — no transitions at all.
const CANDIDATE: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read"

decision := {"allow": false, "reason": "transitions are frozen"} if input.action.name == "ticket.transition"
"#;

fn config(upstream: &str, policy: &str, telemetry: &str) -> String {
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
policy: {policy}
credentials:
  jira-token: {{ kind: secret, file: secrets/jira, header: Authorization, format: "Bearer {{}}" }}
telemetry: {telemetry}
limits: {{ shutdown_timeout: 1s }}
"#
    )
}

const WITH_SHADOW: &str = "{ files: [live/*.rego], shadow: { files: [candidate/*.rego] } }";

fn files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("live/main.rego", LIVE),
        ("candidate/main.rego", CANDIDATE),
        ("secrets/jira", SECRET),
    ]
}

async fn send(tg: &Toolgate, method: &str, path: &str, task: &str) -> reqwest::Response {
    tg.forward_client()
        .request(method.parse().unwrap(), format!("http://jira.test{path}"))
        .header("x-toolgate-task", task)
        .send()
        .await
        .unwrap()
}

fn lines(tg: &Toolgate) -> Vec<Value> {
    std::fs::read_to_string(tg.dir.path().join("decisions.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn metrics(tg: &Toolgate) -> String {
    http_get(tg.admin, "/metrics").unwrap().1
}

/// The rows of `toolgate_shadow_disagreements_total`.
fn disagreement_rows(tg: &Toolgate) -> Vec<String> {
    metrics(tg)
        .lines()
        .filter(|l| l.starts_with("toolgate_shadow_disagreements_total{"))
        .map(str::to_string)
        .collect()
}

const READ_1: &str = "/rest/api/3/issue/SUP-1";
const MOVE_1: &str = "/rest/api/3/issue/SUP-1/transitions";

#[tokio::test(flavor = "multi_thread")]
async fn a_stricter_shadow_changes_nothing_forwarded_and_reports_exactly_the_requests_it_would_refuse(
) {
    let tool = ToolServer::http().await;
    let receiver = Receiver::http().await;
    let telemetry = format!(
        "{{ decision_log: decisions.jsonl, otlp: {{ endpoint: \"{}\", protocol: http }} }}",
        receiver.endpoint()
    );
    let tg = Toolgate::start_with_env(
        &config(&tool.url(), WITH_SHADOW, &telemetry),
        &files(),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );

    // T-1: read then transition (the live policy allows both; the shadow refuses the
    // transition); a transition of an unread ticket (both refuse); another read.
    assert_eq!(send(&tg, "GET", READ_1, "T-1").await.status(), 200);
    assert_eq!(send(&tg, "POST", MOVE_1, "T-1").await.status(), 200);
    let (status, refused) =
        problem(send(&tg, "POST", "/rest/api/3/issue/SUP-3/transitions", "T-1").await).await;
    assert_eq!(
        (status, refused["detail"].as_str()),
        (403, Some("read it first"))
    );
    assert_eq!(
        send(&tg, "GET", "/rest/api/3/issue/SUP-2", "T-1")
            .await
            .status(),
        200
    );
    // T-2: the same story once more.
    assert_eq!(
        send(&tg, "GET", "/rest/api/3/issue/SUP-5", "T-2")
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&tg, "POST", "/rest/api/3/issue/SUP-5/transitions", "T-2")
            .await
            .status(),
        200
    );

    // Forwarded as the live policy decided, each with the injected credential: the shadow
    // never touches what goes out.
    let got: Vec<(String, String, String)> = tool
        .received()
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.target.clone(),
                r.headers["authorization"].to_str().unwrap().to_string(),
            )
        })
        .collect();
    let bearer = format!("Bearer {SECRET}");
    let want = [
        ("GET", READ_1),
        ("POST", MOVE_1),
        ("GET", "/rest/api/3/issue/SUP-2"),
        ("GET", "/rest/api/3/issue/SUP-5"),
        ("POST", "/rest/api/3/issue/SUP-5/transitions"),
    ]
    .map(|(m, t)| (m.to_string(), t.to_string(), bearer.clone()));
    assert_eq!(got, want);

    // The decision log: six decisions, and one shadow line for each of the two transitions
    // the live policy allowed — nothing for the four requests both decided alike.
    wait_until("eight decision-log lines", || lines(&tg).len() == 8);
    let all = lines(&tg);
    let (shadow, live): (Vec<&Value>, Vec<&Value>) =
        all.iter().partition(|l| l.get("shadow").is_some());
    assert_eq!(live.len(), 6);
    assert_eq!(shadow.len(), 2, "{shadow:#?}");
    for (line, task, issue) in [(shadow[0], "T-1", "SUP-1"), (shadow[1], "T-2", "SUP-5")] {
        assert_eq!(line["task"], task);
        assert_eq!(line["action"], "ticket.transition");
        assert_eq!(line["attributes"]["issue"], issue);
        assert_eq!(line["differs"], serde_json::json!(["effect"]));
        assert_eq!(line["live"]["decision"]["effect"], "allow");
        assert_eq!(
            line["live"]["decision"]["credential"]["name"], "jira-token",
            "{line}"
        );
        assert_eq!(
            line["live"]["decision"]["reason"],
            "read earlier in this task"
        );
        assert_eq!(line["shadow"]["decision"]["effect"], "deny");
        assert_eq!(
            line["shadow"]["decision"]["reason"],
            "transitions are frozen"
        );
        assert!(line["shadow"]["decision"].get("credential").is_none());
        assert_ne!(
            line["shadow"]["policy_revision"],
            line["live"]["policy_revision"]
        );
        // The same decision as the live line: its id, seq, trace and span.
        let decided = live
            .iter()
            .find(|l| l["decision_id"] == line["decision_id"])
            .expect("the shadow line names the live decision");
        for key in ["seq", "trace_id", "span_id", "task", "action"] {
            assert_eq!(decided[key], line[key], "{key}");
        }
        assert_eq!(decided["result"]["effect"], "allow");
        assert_eq!(decided["policy_revision"], line["live"]["policy_revision"]);
    }
    assert!(
        !std::fs::read_to_string(tg.dir.path().join("decisions.jsonl"))
            .unwrap()
            .contains(SECRET)
    );

    // The metric counts the same two, by action and both effects.
    assert_eq!(
        disagreement_rows(&tg),
        ["toolgate_shadow_disagreements_total{action=\"ticket.transition\",live=\"allow\",shadow=\"deny\"} 2"]
    );

    // The spans: the two disagreeing transitions carry the shadow's decision and an event;
    // no other span does.
    let spans: Vec<_> = receiver
        .wait_for(6)
        .await
        .into_iter()
        .map(|r| r.span)
        .collect();
    assert_eq!(spans.len(), 6);
    let noted: Vec<(String, i64)> = spans
        .iter()
        .filter(|s| string(&s.attributes, "toolgate.shadow.decision").is_some())
        .map(|s| {
            (
                string(&s.attributes, "toolgate.task.id")
                    .unwrap()
                    .to_string(),
                int(&s.attributes, "toolgate.chain.seq").unwrap(),
            )
        })
        .collect();
    let mut noted = noted;
    noted.sort();
    assert_eq!(noted, [("T-1".to_string(), 2), ("T-2".to_string(), 2)]);
    for span in spans.iter().filter(|s| s.name == "ticket.transition") {
        let events: Vec<_> = span
            .events
            .iter()
            .filter(|e| e.name == "shadow disagreement")
            .collect();
        let Some(noted) = string(&span.attributes, "toolgate.shadow.decision") else {
            assert!(events.is_empty(), "the refused transition: both agreed");
            continue;
        };
        assert_eq!(noted, "deny");
        assert_eq!(string(&span.attributes, "toolgate.decision"), Some("allow"));
        assert_eq!(events.len(), 1);
        let e = &events[0].attributes;
        assert_eq!(string(e, "toolgate.shadow.decision"), Some("deny"));
        assert_eq!(string(e, "toolgate.decision"), Some("allow"));
        assert_eq!(
            string(e, "toolgate.shadow.reason"),
            Some("transitions are frozen")
        );
        assert_eq!(string(e, "toolgate.shadow.differs"), Some("effect"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_swaps_the_shadow_alone_keeps_the_last_good_one_and_promotion_is_a_config_change() {
    let tool = ToolServer::http().await;
    let tg = Toolgate::start(
        &config(
            &tool.url(),
            WITH_SHADOW,
            "{ decision_log: decisions.jsonl }",
        ),
        &files(),
    );
    let dir = tg.dir.path().to_path_buf();
    assert_eq!(send(&tg, "GET", READ_1, "T-1").await.status(), 200);
    assert_eq!(send(&tg, "POST", MOVE_1, "T-1").await.status(), 200);
    wait_until("the first shadow line", || {
        lines(&tg).iter().any(|l| l.get("shadow").is_some())
    });
    let first_shadow = lines(&tg)
        .into_iter()
        .find(|l| l.get("shadow").is_some())
        .unwrap();
    let live_revision = first_shadow["live"]["policy_revision"].clone();
    let shadow_revision = first_shadow["shadow"]["policy_revision"].clone();

    // Break the shadow and change the live policy in the same reload: the live change is
    // applied, the broken shadow is rejected and the last good one keeps running.
    std::fs::write(
        dir.join("candidate/main.rego"),
        "package toolgate\n\ndecision := {\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("live/main.rego"),
        LIVE.replace("reading tickets is allowed", "reads are fine"),
    )
    .unwrap();
    wait_until("the shadow to be rejected", || {
        metrics(&tg).contains("toolgate_policy_reloads_total{result=\"shadow_failure\"}")
    });
    assert!(tg.wait_for_log("new shadow policy rejected"));
    assert!(tg.logs().contains("candidate/main.rego"), "{}", tg.logs());
    assert!(metrics(&tg).contains("toolgate_policy_reloads_total{result=\"success\"}"));
    assert!(!metrics(&tg).contains("toolgate_policy_reloads_total{result=\"failure\"}"));
    let read = send(&tg, "GET", "/rest/api/3/issue/SUP-2", "T-2").await;
    assert_eq!(read.status(), 200);
    assert_eq!(
        send(&tg, "POST", "/rest/api/3/issue/SUP-2/transitions", "T-2")
            .await
            .status(),
        200
    );
    wait_until("the second shadow line", || {
        lines(&tg)
            .iter()
            .filter(|l| l.get("shadow").is_some())
            .count()
            == 2
    });
    let all = lines(&tg);
    let second = all
        .iter()
        .filter(|l| l.get("shadow").is_some())
        .nth(1)
        .unwrap();
    assert_eq!(
        second["shadow"]["policy_revision"], shadow_revision,
        "the last good shadow"
    );
    assert_ne!(
        second["live"]["policy_revision"], live_revision,
        "the new live policy"
    );
    let read_line = all
        .iter()
        .find(|l| l["task"] == "T-2" && l["action"] == "ticket.read")
        .unwrap();
    assert_eq!(read_line["result"]["reason"], "reads are fine");

    // Promote: the candidate becomes the live policy, with no shadow. Transitions are now
    // refused, and nothing disagrees any more.
    std::fs::write(dir.join("candidate/main.rego"), CANDIDATE).unwrap();
    let promoted = config(
        &tool.url(),
        "{ files: [candidate/*.rego] }",
        "{ decision_log: decisions.jsonl }",
    );
    let yaml = std::fs::read_to_string(dir.join("toolgate.yaml")).unwrap();
    let listen = yaml.lines().next().unwrap();
    std::fs::write(dir.join("toolgate.yaml"), format!("{listen}\n{promoted}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = send(&tg, "POST", "/rest/api/3/issue/SUP-2/transitions", "T-2").await;
        if resp.status() == 403 {
            let (_, body) = problem(resp).await;
            assert_eq!(body["detail"], "transitions are frozen");
            break;
        }
        assert!(Instant::now() < deadline, "the promotion never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last exchange under the old configuration finish its record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = disagreement_rows(&tg);
    assert_eq!(send(&tg, "GET", READ_1, "T-3").await.status(), 200);
    assert_eq!(problem(send(&tg, "POST", MOVE_1, "T-3").await).await.0, 403);
    assert_eq!(disagreement_rows(&tg), before, "no shadow, no disagreement");
}

#[test]
fn check_refuses_a_shadow_that_does_not_compile_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files() {
        support::write(dir.path(), path, text);
    }
    support::write(
        dir.path(),
        "toolgate.yaml",
        &config("http://127.0.0.1:9", WITH_SHADOW, "{ decision_log: off }"),
    );
    let check = |dir: &std::path::Path| {
        std::process::Command::new(support::binary())
            .args(["check", "-c"])
            .arg(dir.join("toolgate.yaml"))
            .output()
            .unwrap()
    };
    let good = check(dir.path());
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}");
    assert!(stdout.contains("shadow policy revision"), "{stdout}");
    support::write(
        dir.path(),
        "candidate/main.rego",
        "package toolgate\n\ndecision := {\n",
    );
    let bad = check(dir.path());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("policy.shadow"), "{stderr}");
    assert!(stderr.contains("candidate/main.rego:"), "{stderr}");
}
