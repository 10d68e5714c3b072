//! The operator API against the agent it exists to stop: every test is written from the
//! attacker's side — a client on the same loopback as toolgate, as the agent in the pod is —
//! with the legitimate operator's request as the positive control. End to end through the
//! real binary, a real tool server and real clients (raw HTTP/1.1, reqwest, the `toolgate
//! revoke` command).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "operator/auth.rs"]
mod auth;
#[path = "operator/cli.rs"]
mod cli;
#[path = "operator/properties.rs"]
mod properties;
#[path = "operator/revocations.rs"]
mod revocations;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{binary, http_get, ToolServer, Toolgate, OPERATOR_TOKEN_FILE};

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read"
"#;

const TOKEN_CONFIG: &str = "admin: { token_file: operator-token }";

fn config(tool: &ToolServer, extra: &str) -> String {
    format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {}
    actions:
      - name: ticket.read
        match: {{ method: GET, path: "/rest/api/3/issue/{{issue}}" }}
policy: {{ files: [policy/*.rego] }}
limits: {{ shutdown_timeout: 1s }}
{extra}
"#,
        tool.url()
    )
}

/// toolgate with `extra` config and the operator token file in its directory.
fn start(tool: &ToolServer, extra: &str) -> Toolgate {
    Toolgate::start(
        &config(tool, extra),
        &[("policy/main.rego", POLICY), OPERATOR_TOKEN_FILE],
    )
}

/// toolgate with an operator socket at `run/operator.sock` in its directory (mode 0700).
fn start_with_socket(tool: &ToolServer, extra: &str) -> Toolgate {
    Toolgate::start_with_listen(
        "operator: \"unix:run/operator.sock\"",
        &config(tool, extra),
        &[
            ("policy/main.rego", POLICY),
            OPERATOR_TOKEN_FILE,
            ("run/.keep", ""),
        ],
        &[],
    )
}

fn socket(tg: &Toolgate) -> std::path::PathBuf {
    tg.dir.path().join("run/operator.sock")
}

/// The agent reads a ticket in `task` through the proxy; the status it gets.
async fn read_ticket(tg: &Toolgate, task: &str) -> (u16, Value) {
    let resp = tg
        .forward_client()
        .get("http://jira.test/rest/api/3/issue/SUP-1")
        .header("x-toolgate-task", task)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn problem_type(answer: &support::Answer) -> String {
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{answer:?}"
    );
    let body = answer.json();
    assert_eq!(body["status"], answer.status, "{body}");
    body["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("urn:toolgate:problem:")
        .to_string()
}

fn metric(tg: &Toolgate, line_start: &str) -> Option<u64> {
    let (_, text) = http_get(tg.admin, "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

fn revoke_body(kind: &str, id: &str, ttl: Option<&str>) -> String {
    let mut body = json!({ kind: id });
    if let Some(ttl) = ttl {
        body["ttl"] = json!(ttl);
    }
    body.to_string()
}

/// Start toolgate from a fresh directory with `listen` extras and `config`, expecting it to
/// refuse to start; its standard error.
fn refused_start(dir: &Path, listen: &str, config: &str) -> String {
    support::write(dir, "policy/main.rego", POLICY);
    support::write(dir, OPERATOR_TOKEN_FILE.0, OPERATOR_TOKEN_FILE.1);
    let yaml = format!(
        "listen: {{ proxy: \"127.0.0.1:{}\", admin: \"127.0.0.1:{}\"{listen} }}\n{config}",
        support::free_port(),
        support::free_port(),
    );
    support::write(dir, "toolgate.yaml", &yaml);
    let started = Instant::now();
    let out = Command::new(binary())
        .args(["run", "-c"])
        .arg(dir.join("toolgate.yaml"))
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

/// A state file holding `n` jti revocations that end in 2099.
fn full_state(n: usize) -> String {
    let entries: Vec<Value> = (0..n)
        .map(|i| json!({ "kind": "jti", "id": format!("jti-{i}"), "expires": "2099-01-01T00:00:00Z" }))
        .collect();
    json!({ "version": 1, "revocations": entries }).to_string()
}
