//! Policies checked against the input they will see, through the real binary: `toolgate check`
//! and `toolgate test` report a reference to an input path the input never has
//! (`input.action.nme`) and an attribute no action extracts (`not input.action.attributes.isue`,
//! a typo that fails open) with FILE:LINE:COL, and raise no false alarm on the quickstart and
//! the golden configuration; `toolgate schema` prints the input's JSON Schema from the catalog.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::{binary, write};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

const CONFIG: &str = r#"
agent: { id: spiffe://example.org/ns/support/sa/triage-agent }
tools:
  - name: jira
    hosts: [jira.example.com]
    actions:
      - name: ticket.read
        match: { method: GET, path: "/rest/api/3/issue/{issue}" }
        attributes: { issue: "path:issue" }
      - name: ticket.comment
        match: { method: POST, path: "/rest/api/3/issue/{issue}/comment" }
        attributes: { issue: "path:issue" }
policy: { files: [policy/*.rego] }
"#;

/// The two typos: one never matches (reads are never allowed), one always holds — and would
/// fail open in a rule that allows.
const TYPOS: &str = "package toolgate
import rego.v1

default decision := {\"allow\": false, \"reason\": \"no rule allows this action\"}

decision := {\"allow\": true, \"reason\": \"reading is allowed\"} if {
\tinput.action.nme == \"ticket.read\"
}

decision := {\"allow\": false, \"reason\": \"a comment names its ticket\"} if {
\tinput.action.name == \"ticket.comment\"
\tnot input.action.attributes.isue
}
";

/// A fixture `toolgate test` replays: the read is allowed, the comment is not.
const FIXTURE: &str = "steps:
  - request: { method: GET, url: http://jira.example.com/rest/api/3/issue/SUP-1 }
    want: { action: ticket.read, decision: allow }
  - request: { method: POST, url: http://jira.example.com/rest/api/3/issue/SUP-1/comment }
    want: { action: ticket.comment, decision: deny }
";

fn run(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let out: Output = Command::new(binary())
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn project(policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "toolgate.yaml", CONFIG);
    write(dir.path(), "policy/main.rego", policy);
    write(dir.path(), "tests/comment.yaml", FIXTURE);
    dir
}

fn fixed() -> String {
    TYPOS.replace(".nme", ".name").replace(".isue", ".issue")
}

#[test]
fn check_flags_the_two_typos_with_file_line_and_column_and_passes_the_fixed_policy() {
    let dir = project(TYPOS);
    let rego = dir.path().join("policy/main.rego");
    let (code, stdout, stderr) = run(&["check"], &dir.path().join("toolgate.yaml"));
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{}:7:2: input.action.nme: input.action has no field \"nme\" (it has name, tool, attributes, definition)",
                rego.display()
            ),
            format!(
                "{}:12:6: input.action.attributes.isue: input.action.attributes: no attribute \"isue\": ticket.comment extracts issue",
                rego.display()
            ),
        ],
        "{stderr}"
    );
    // The positive control: spelled right, the same policy checks clean.
    write(dir.path(), "policy/main.rego", &fixed());
    let (code, stdout, stderr) = run(&["check"], &dir.path().join("toolgate.yaml"));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(": ok — 1 tools, 2 actions"), "{stdout}");
    assert!(!stderr.contains("main.rego"), "{stderr}");
}

#[test]
fn test_fails_on_the_typos_and_passes_the_fixed_policy() {
    let dir = project(TYPOS);
    let config = dir.path().join("toolgate.yaml");
    let fixture = dir.path().join("tests");
    let args = ["test", fixture.to_str().unwrap()];
    let (code, stdout, stderr) = run(&args, &config);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let text = format!("{stdout}{stderr}");
    assert!(text.contains("main.rego:7:2: input.action.nme"), "{text}");
    assert!(
        text.contains("main.rego:12:6: input.action.attributes.isue"),
        "{text}"
    );
    write(dir.path(), "policy/main.rego", &fixed());
    let (code, stdout, stderr) = run(&args, &config);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
}

#[test]
fn check_and_test_raise_no_false_alarm_on_the_quickstart_and_the_golden_config() {
    for config in [
        "examples/quickstart/toolgate.yaml",
        "tests/golden/config/toolgate.yaml",
    ] {
        let (code, stdout, stderr) = run(&["check"], &Path::new(REPO).join(config));
        assert_eq!(code, Some(0), "{config}: {stdout}{stderr}");
        assert!(!stderr.contains(".rego:"), "{config}: {stderr}");
    }
    let (code, stdout, stderr) = run(
        &["test"],
        &Path::new(REPO).join("examples/quickstart/toolgate.yaml"),
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("input schema"), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn schema_prints_the_input_with_each_catalogued_action_and_its_attributes() {
    let (code, stdout, stderr) = run(
        &["schema"],
        &Path::new(REPO).join("examples/quickstart/toolgate.yaml"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let schema: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    let actions = schema["properties"]["action"]["anyOf"].as_array().unwrap();
    let named = |name: &str| {
        actions
            .iter()
            .find(|a| a["properties"]["name"]["enum"] == json!([name]))
            .unwrap_or_else(|| panic!("{name} in {actions:#?}"))
    };
    assert_eq!(
        named("payment.create")["properties"]["attributes"],
        json!({
            "type": "object",
            "properties": {"amount": {"type": "string"}, "currency": {"type": "string"}},
            "additionalProperties": false,
        })
    );
    assert_eq!(
        named("ticket.read")["properties"]["tool"],
        json!({"enum": ["jira"]})
    );
    assert_eq!(
        named("unknown")["properties"]["attributes"]["additionalProperties"],
        false
    );
    // The MCP tool: any crm.<tool> with any arguments.
    assert!(actions
        .iter()
        .any(|a| a["properties"]["name"]["pattern"] == "^crm\\."));
    assert_eq!(
        schema["properties"]["chain"]["items"]["properties"]["outcome"]["type"],
        "string"
    );
    // A configuration that cannot be read: exit 2 with the reason.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "toolgate.yaml", "agent: { id: a }\nnope: 1\n");
    let (code, _, stderr) = run(&["schema"], &dir.path().join("toolgate.yaml"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("nope"), "{stderr}");
}
