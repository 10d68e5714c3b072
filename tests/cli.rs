//! The command line: `check` on good and broken configs, `run` on the embedded quickstart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{binary, http_get, write};

const QUICKSTART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/quickstart/toolgate.yaml"
);

fn check(path: &std::path::Path) -> (i32, String) {
    let out = Command::new(binary())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_accepts_the_quickstart() {
    let (code, text) = check(std::path::Path::new(QUICKSTART));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok — 3 tools, 5 actions"), "{text}");
}

#[test]
fn check_names_the_rego_file_and_line_of_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "toolgate.yaml",
        "agent: { id: a }\npolicy: { files: [policy/*.rego] }\n",
    );
    write(
        dir.path(),
        "policy/ok.rego",
        "package toolgate\ndefault decision := false\n",
    );
    write(
        dir.path(),
        "policy/broken.rego",
        "package toolgate\n\nallow if {\n  input.x ==\n}\n",
    );
    let (code, text) = check(&dir.path().join("toolgate.yaml"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("policy/broken.rego:5:"), "{text}");
    assert_eq!(text.lines().count(), 1, "one line per error: {text}");
}

#[test]
fn check_names_the_path_of_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "toolgate.yaml",
        "agent: { id: a }\ntools:\n  - name: t\n    hosts: [t.test]\n    actions:\n      - { name: x, match: { path: /x, verb: GET } }\npolicy: { files: [p.rego] }\n",
    );
    write(
        dir.path(),
        "p.rego",
        "package toolgate\ndecision := false\n",
    );
    let (code, text) = check(&dir.path().join("toolgate.yaml"));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("toolgate.yaml: tools[0].actions[0].match.verb: unknown key"),
        "{text}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let (code, text) = check(std::path::Path::new("/nonexistent/toolgate.yaml"));
    assert_eq!(code, 2);
    assert!(
        text.contains("/nonexistent/toolgate.yaml: cannot read"),
        "{text}"
    );
}

/// The one test that uses the fixed quickstart ports 15000/15001.
#[test]
fn run_without_arguments_serves_the_embedded_quickstart() {
    let mut child = Command::new(binary())
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let admin = "127.0.0.1:15000".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while Instant::now() < deadline && !ready {
        ready = http_get(admin, "/readyz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false);
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = http_get(admin, "/healthz");
    let denied = support::raw(
        "127.0.0.1:15001".parse().unwrap(),
        "GET http://unknown.example.net/ HTTP/1.1\r\nHost: unknown.example.net\r\nConnection: close\r\n\r\n",
    );
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(ready, "not ready:\n{logs}");
    assert_eq!(health.unwrap().0, 200);
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}\n{logs}");
    assert!(
        denied.contains("no tool in the catalog serves unknown.example.net"),
        "{denied}"
    );
}

fn toolgate_test(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(binary())
        .arg("test")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn test_command_passes_on_the_quickstart_examples() {
    let (code, text) = toolgate_test(&["-c".as_ref(), QUICKSTART.as_ref()]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("PASS data.toolgate_test.test_transition_needs_a_successful_read"),
        "{text}"
    );
    assert!(
        text.contains("ticket_chain.yaml step 3 (now the transition is allowed)"),
        "{text}"
    );
    assert!(
        text.contains("crm.yaml step 3 (the same URL with another tool name is another action)"),
        "{text}"
    );
    assert!(text.contains(" 0 failed"), "{text}");
}

#[test]
fn test_command_fails_on_a_wrong_fixture_and_a_false_rego_test() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "wrong.yaml",
        "steps:\n  - request: { method: POST, url: http://jira.example.com/rest/api/3/issue/SUP-1/transitions }\n    want: { action: ticket.transition, decision: allow }\n",
    );
    let (code, text) = toolgate_test(&["-c".as_ref(), QUICKSTART.as_ref(), dir.path().as_os_str()]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL") && text.contains("wrong.yaml step 1: decision deny"),
        "{text}"
    );

    let rego = tempfile::tempdir().unwrap();
    write(
        rego.path(),
        "false_test.rego",
        "package t\nimport rego.v1\ntest_is_false if { 1 == 2 }\n",
    );
    let (code, text) =
        toolgate_test(&["-c".as_ref(), QUICKSTART.as_ref(), rego.path().as_os_str()]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL data.t.test_is_false: undefined"),
        "{text}"
    );
}
