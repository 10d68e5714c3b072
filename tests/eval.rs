//! `toolgate eval`: one request classified and decided offline, printed as JSON — the
//! action, attributes, the policy input document and the decision.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/config/toolgate.yaml"
);

/// Run `toolgate eval -c GOLDEN ARGS` with `stdin`; (exit code, parsed stdout, stderr).
fn eval(args: &[&str], stdin: &[u8]) -> (i32, Value, String) {
    let mut child = Command::new(support::binary())
        .args(["eval", "-c", GOLDEN])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

#[test]
fn eval_prints_action_attributes_input_and_decision_for_a_body_rule() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("close.json");
    std::fs::write(&body, r#"{"transition":{"id":"31"}}"#).unwrap();
    let (code, out, err) = eval(
        &[
            "--method",
            "POST",
            "--url",
            "http://jira.example.com/rest/api/3/issue/SUP-7/transitions",
            "--header",
            "Content-Type: application/json",
            "--header",
            "Authorization: Bearer agent-own",
            "--body",
            body.to_str().unwrap(),
            "--task",
            "T-9",
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["tool"], "jira");
    assert_eq!(out["action"], "ticket.close");
    assert_eq!(out["attributes"], json!({"issue": "SUP-7"}));
    assert_eq!(out["decision"]["allow"], false);
    assert_eq!(out["decision"]["reason"], "closing a ticket needs a human");
    assert_eq!(out["forwarded"], false);
    let input = &out["input"];
    assert_eq!(input["task"]["id"], "T-9");
    assert_eq!(input["action"]["name"], "ticket.close");
    assert_eq!(input["request"]["body"]["transition"]["id"], "31");
    assert_eq!(
        input["request"]["path"],
        "/rest/api/3/issue/SUP-7/transitions"
    );
    assert!(
        input["request"]["headers"].get("authorization").is_none(),
        "credential headers never reach the input: {input}"
    );
}

#[test]
fn eval_reads_the_body_from_standard_input() {
    let (code, out, err) = eval(
        &[
            "--method",
            "POST",
            "--url",
            "http://payments.example.com/v1/payments",
            "--header",
            "content-type:application/x-www-form-urlencoded",
            "--body",
            "-",
        ],
        b"amount=40&currency=EUR",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["action"], "payment.create");
    assert_eq!(
        out["attributes"],
        json!({"amount": "40", "currency": "EUR"})
    );
    assert_eq!(out["decision"]["allow"], true);
    assert_eq!(out["forwarded"], true);
    assert_eq!(
        out["input"]["request"]["body"],
        json!({"amount": "40", "currency": "EUR"})
    );
}

#[test]
fn eval_reports_a_refusal_with_the_status_the_proxy_would_answer() {
    let (code, out, err) = eval(
        &[
            "--method",
            "GET",
            "--url",
            "http://jira.example.com/rest/api/3/issue/%2e%2e/admin",
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["refused"]["status"], 400);
    assert_eq!(
        out["refused"]["reason"],
        "path contains a '.' or '..' segment (raw or percent-encoded)"
    );
    assert_eq!(out["forwarded"], false);
}

#[test]
fn eval_shows_each_member_of_a_json_rpc_batch() {
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "a"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_customer", "arguments": {}}},
    ]);
    let (code, out, err) = eval(
        &[
            "--method",
            "POST",
            "--url",
            "http://crm.example.com/mcp",
            "--header",
            "content-type: application/json",
            "--body",
            "-",
        ],
        batch.to_string().as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out["action"], "crm.delete_customer",
        "the member that decides: {out}"
    );
    let members = out["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["action"], "crm.search");
    assert_eq!(members[0]["decision"]["allow"], true);
    assert_eq!(
        members[1]["decision"]["reason"],
        "deleting customers needs a human"
    );
    assert_eq!(members[1]["input"]["request"]["body"]["id"], 2);
}

#[test]
fn eval_refuses_a_malformed_header_with_exit_2() {
    let (code, _, err) = eval(
        &[
            "--method",
            "GET",
            "--url",
            "http://jira.example.com/",
            "--header",
            "no-colon",
        ],
        b"",
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("--header \"no-colon\" must be `Name: value`"),
        "{err}"
    );
}
