//! The official MCP SDKs on both sides of toolgate, in the newest versions the registries
//! serve: a server built with the Python SDK (`mcp` 2.x `MCPServer`, both protocol eras), and
//! as clients the Python SDK (`mcp.Client` through `HTTP_PROXY`, in the session-based era and
//! in 2026-07-28) and the TypeScript SDK (`@modelcontextprotocol/sdk`, session-based only:
//! its newest release speaks 2025-11-25; through a named route, since Node's fetch ignores
//! `HTTP_PROXY`). Each lists the tools — the one policy denies is not listed — calls the
//! allowed one and gets the JSON-RPC error for the denied one, which never reaches the server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Toolgate;

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": true, "reason": "allowed"}

decision := {"allow": false, "reason": "deleting customers needs a human"} if {
	input.action.name == "crm.delete_customer"
}
"#;

fn config(upstream: &str) -> String {
    format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: crm
    hosts: [crm.test]
    upstream: {upstream}
    protocol: mcp
routes:
  - {{ prefix: /crm/, tool: crm }}
policy: {{ files: [policy/*.rego] }}
limits: {{ connect_timeout: 2s, upstream_timeout: 10s, shutdown_timeout: 1s }}
"#
    )
}

/// The MCP Python SDK's server, on a free port, recording the tool calls it runs.
struct SdkServer {
    child: Child,
    port: u16,
    record: tempfile::NamedTempFile,
}

impl SdkServer {
    fn start() -> SdkServer {
        let port = support::free_port();
        let record = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("python3")
            .arg(dir().join("sdk.py"))
            .args(["server", &port.to_string()])
            .arg(record.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is required (scripts/test.sh installs the MCP SDK)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the MCP SDK server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        SdkServer {
            child,
            port,
            record,
        }
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.record.path()).unwrap()
    }
}

impl Drop for SdkServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp")
}

fn start(server: &SdkServer) -> Toolgate {
    Toolgate::start(
        &config(&format!("http://127.0.0.1:{}", server.port)),
        &[("policy/main.rego", POLICY)],
    )
}

/// Run a client command; its JSON report.
fn report(mut command: Command, tg: &Toolgate) -> Value {
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError") && !stderr.contains("ERR_MODULE_NOT_FOUND"),
        "run scripts/test.sh, which installs the MCP SDKs: {stderr}"
    );
    assert!(out.status.success(), "{stdout}{stderr}\n{}", tg.logs());
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn python_client(tg: &Toolgate, mode: &str) -> Value {
    let mut c = Command::new("python3");
    c.arg(dir().join("sdk.py"))
        .args(["client", "http://crm.test/mcp", mode])
        .env("HTTP_PROXY", tg.proxy_url())
        .env("http_proxy", tg.proxy_url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    report(c, tg)
}

/// The checks every client must pass: the denied tool unlisted, the allowed call answered,
/// the denied call a JSON-RPC error the server never saw.
fn lists_calls_and_is_refused(report: &Value, server: &SdkServer, tg: &Toolgate) {
    assert_eq!(report["tools"], json!(["search"]), "{report}");
    assert_eq!(report["search"]["is_error"], false, "{report}");
    assert_eq!(
        report["search"]["text"][0],
        "found 2 customers matching acme"
    );
    let denied = &report["delete"];
    assert_eq!(denied["code"], -32001, "{report}");
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("deleting customers needs a human"),
        "{report}"
    );
    assert_eq!(denied["data"]["action"], "crm.delete_customer");
    assert_eq!(
        server.calls(),
        "search acme\n",
        "the denied call reached the server"
    );
    assert!(
        tg.wait_for_log("action=crm.mcp.tools_list"),
        "{}",
        tg.logs()
    );
}

#[test]
fn the_python_sdk_client_in_the_session_era() {
    let server = SdkServer::start();
    let tg = start(&server);
    let report = python_client(&tg, "legacy");
    assert_eq!(report["protocol"], "2025-11-25");
    lists_calls_and_is_refused(&report, &server, &tg);
    assert!(tg.logs().contains("action=crm.mcp.initialize"));
}

#[test]
fn the_python_sdk_client_in_2026_07_28() {
    let server = SdkServer::start();
    let tg = start(&server);
    let report = python_client(&tg, "2026-07-28");
    assert_eq!(report["protocol"], "2026-07-28");
    lists_calls_and_is_refused(&report, &server, &tg);
    // Stateless: no handshake went through toolgate.
    assert!(
        !tg.logs().contains("action=crm.mcp.initialize"),
        "{}",
        tg.logs()
    );
}

#[test]
fn the_python_sdk_client_negotiating() {
    let server = SdkServer::start();
    let tg = start(&server);
    let report = python_client(&tg, "auto");
    assert_eq!(report["protocol"], "2026-07-28");
    lists_calls_and_is_refused(&report, &server, &tg);
    assert!(
        tg.logs().contains("action=crm.mcp.server_discover"),
        "{}",
        tg.logs()
    );
}

#[test]
fn the_typescript_sdk_client() {
    let ts = dir().join("ts");
    assert!(
        ts.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
        "run scripts/test.sh, which runs npm ci in {}",
        ts.display()
    );
    let server = SdkServer::start();
    let tg = start(&server);
    let mut c = Command::new("node");
    c.current_dir(&ts)
        .arg("client.mjs")
        .arg(format!("{}/crm/mcp", tg.proxy_url()));
    let report = report(c, &tg);
    assert_eq!(report["protocol"], "2025-11-25");
    lists_calls_and_is_refused(&report, &server, &tg);
    assert!(
        tg.wait_for_log("action=crm.mcp.initialize"),
        "{}",
        tg.logs()
    );
}
