use std::path::Path;

use http::HeaderMap;

use super::*;
use crate::chain::{Ledger, Outcome, TaskKey};
use crate::config::{EmbeddedFiles, PolicySource, StaticEnv};
use crate::offline;

const LIVE: &str = r#"package toolgate
import data.toolgate.lib
import rego.v1
default decision := {"allow": false, "reason": "no"}
decision := {"allow": true, "reason": "read"} if input.action.name == "ticket.read"
decision := {"allow": true, "reason": "after a read"} if {
	input.action.name == "ticket.transition"
	lib.done_in_task("ticket.read", {"issue": input.action.attributes.issue})
}
"#;

fn config() -> Config {
    let yaml = br#"
agent: { id: a }
tools:
  - name: jira
    hosts: [jira.test]
    credential: jira-token
    actions:
      - { name: ticket.read, match: { method: GET, path: "/issue/{issue}" }, attributes: { issue: "path:issue" } }
      - { name: ticket.transition, match: { method: POST, path: "/issue/{issue}/move" }, attributes: { issue: "path:issue" } }
policy: { files: [live.rego] }
credentials:
  jira-token: { kind: secret, env: T, header: Authorization }
"#;
    let files = EmbeddedFiles::new(&[("toolgate.yaml", yaml), ("live.rego", LIVE.as_bytes())]);
    let env = StaticEnv([("T".to_string(), "x".to_string())].into());
    Config::load_from(Path::new("toolgate.yaml"), &files, &env).unwrap()
}

fn policy(config: &Config, text: &str) -> Policy {
    Policy::compile(&PolicySource {
        modules: vec![("candidate.rego".into(), text.into())],
        ..config.policy.clone()
    })
    .unwrap()
}

/// Decide `steps` (method, path, task) with the live policy as the proxy does, settling each
/// forwarded action with 200, and write them as decision-log lines with inputs.
fn record(config: &Config, steps: &[(&str, &str, &str)]) -> String {
    let live = Policy::compile(&config.policy).unwrap();
    let ledger = Ledger::new(&config.chain);
    let mut log = String::new();
    for (i, (method, path, task)) in steps.iter().enumerate() {
        let request = offline::Request {
            method: method.to_string(),
            url: format!("http://jira.test{path}"),
            ..Default::default()
        };
        let outcome = offline::decide(
            config,
            &live,
            &request,
            &HeaderMap::new(),
            None,
            task,
            &ledger,
            None,
        )
        .unwrap();
        let e = &outcome.evaluations[0];
        let settled = if e.decision.allowed() {
            Outcome::Response(200)
        } else {
            Outcome::Refused(403)
        };
        ledger.settle(&TaskKey::named(task), e.seq, settled);
        let tool = config.catalog.tool(0);
        let line = serde_json::json!({
            "decision_id": format!("d{i}"),
            "trace_id": format!("t-{task}"),
            "span_id": format!("s{i}"),
            "task": task,
            "seq": e.seq,
            "action": &*e.classification.action,
            "policy_revision": live.revision(),
            "input": serde_json::to_value(&e.input).unwrap(),
            "decision": Verdict::of(config, tool, &e.decision),
        });
        log.push_str(&format!("{line}\n"));
    }
    log
}

fn run(config: &Config, candidate: &str, log: &str) -> Report {
    let mut recorded = Vec::new();
    let mut skipped = Skipped::default();
    read_log("log", log.as_bytes(), &mut recorded, &mut skipped).unwrap();
    replay(config, &policy(config, candidate), recorded, skipped)
}

const STEPS: &[(&str, &str, &str)] = &[
    ("GET", "/issue/SUP-1", "T-1"),
    ("POST", "/issue/SUP-1/move", "T-1"),
    ("POST", "/issue/SUP-2/move", "T-2"),
];

#[test]
fn the_unchanged_policy_changes_nothing() {
    let c = config();
    let report = run(&c, LIVE, &record(&c, STEPS));
    assert_eq!((report.replayed, report.tasks), (3, 2));
    assert!(!report.changed(), "{report:#?}");
    assert_eq!(report.actions["ticket.read"].unchanged, 1);
    assert_eq!(report.actions["ticket.transition"].unchanged, 2);
}

#[test]
fn a_candidate_that_refuses_reads_reports_them_and_the_transition_that_needed_one() {
    let c = config();
    let candidate = LIVE.replace(
        r#"decision := {"allow": true, "reason": "read"} if input.action.name == "ticket.read""#,
        r#"decision := {"allow": false, "reason": "reads paused"} if input.action.name == "ticket.read""#,
    );
    let report = run(&c, &candidate, &record(&c, STEPS));
    assert!(report.changed());
    let changes: Vec<(&str, &str, u64, Change)> = report
        .changes
        .iter()
        .map(|c| (c.decision_id.as_str(), c.task.as_str(), c.seq, c.change))
        .collect();
    assert_eq!(changes, [("d0", "T-1", 1, Change::NewlyDenied)]);
    assert_eq!(report.changes[0].trace_id, "t-T-1");
    assert_eq!(report.changes[0].candidate.reason, "reads paused");
    assert_eq!(report.changes[0].origin, "log:1");
    // As recorded, the transition saw a successful read and stays allowed; with the
    // candidate's own history (the read refused) it would not be.
    assert_eq!(report.actions["ticket.transition"].unchanged, 2);
    assert_eq!(report.history.len(), 1, "{:#?}", report.history);
    let note = &report.history[0];
    assert_eq!((note.decision_id.as_str(), note.seq), ("d1", 2));
    assert_eq!(note.changed_before, [1]);
    assert_eq!(note.as_recorded.effect, Ruling::Allow);
    assert_eq!(note.with_candidate_history.effect, Ruling::Deny);
}

#[test]
fn lines_without_input_and_shadow_lines_are_counted_not_replayed() {
    let c = config();
    let mut log = record(&c, &STEPS[..1]);
    log.push_str(&log.clone()); // the same decision twice
    log.push_str("{\"decision_id\":\"x\",\"task\":\"T\",\"seq\":1,\"result\":{}}\n");
    log.push_str("{\"decision_id\":\"d0\",\"shadow\":{},\"live\":{}}\n\n");
    let report = run(&c, LIVE, &log);
    assert_eq!(report.replayed, 1);
    assert_eq!(
        (
            report.skipped.without_input,
            report.skipped.shadow_lines,
            report.skipped.duplicates
        ),
        (1, 1, 1)
    );
    let mut recorded = Vec::new();
    let e = read_log(
        "d.jsonl",
        "{}\nnot json\n".as_bytes(),
        &mut recorded,
        &mut Skipped::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("d.jsonl:1: not a decision-log line"),
        "{e}"
    );
}
