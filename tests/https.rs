//! HTTPS through the proxy listener: CONNECT with TLS interception (curl with `--proxy` and
//! `--cacert`, Python `requests` with HTTPS_PROXY + REQUESTS_CA_BUNDLE), refusals before any
//! TLS, a spoofed Host inside a tunnel, non-TLS bytes in a tunnel, and `intercept: false`.
//!
//! The agent asks for `https://jira.test/…`: through a proxy, curl and requests never resolve
//! it; toolgate mints the certificate for `jira.test` (the CONNECT target), and the tool's
//! `upstream` sends the re-encrypted request to a local HTTPS tool, verified against its CA.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{TestCa, ToolServer, Toolgate};

const SECRET: &str = "jira-secret-value-7f3a";

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read"

decision := {"allow": false, "reason": "deleting tickets needs a human"} if input.action.name == "ticket.delete"

decision := {"allow": true, "reason": "vault tunnels are allowed"} if {
    input.action.name == "vault.connect"
    input.request.method == "CONNECT"
}
"#;

/// A running toolgate with its CA (made by `toolgate ca init`) and a tool behind HTTPS.
struct Setup {
    tg: Toolgate,
    tool: ToolServer,
    /// toolgate's CA certificate, what agents trust.
    ca: std::path::PathBuf,
    /// The tool's CA, what a client talking to the tool directly (spliced) trusts.
    tool_ca: std::path::PathBuf,
    _keep: tempfile::TempDir,
}

/// `tls_ca: false` leaves `tls.ca` out.
async fn setup(tls_ca: bool) -> Setup {
    let tool_ca = TestCa::new();
    let tool = ToolServer::https(&tool_ca).await;
    let keep = tempfile::tempdir().unwrap();
    let ca = keep.path().join("ca.pem");
    let key = keep.path().join("ca-key.pem");
    let out = Command::new(support::binary())
        .args(["ca", "init", "--cert"])
        .arg(&ca)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the CA key must not be readable by others");
    let tool_ca_path = keep.path().join("tool-ca.pem");
    std::fs::write(&tool_ca_path, &tool_ca.ca_pem).unwrap();
    let ca_line = if tls_ca {
        format!("ca: {{ cert: {}, key: {} }}", ca.display(), key.display())
    } else {
        String::new()
    };
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: jira
    hosts: [jira.test, 127.0.0.1]
    upstream: https://localhost:{port}
    credential: jira-token
    actions:
      - name: ticket.read
        match: {{ method: GET, path: "/rest/api/3/issue/{{issue}}" }}
        attributes: {{ issue: "path:issue" }}
      - name: ticket.delete
        match: {{ method: DELETE, path: "/rest/api/3/issue/{{issue}}" }}
  - name: vault
    hosts: ["localhost:{port}"]
    intercept: false
    credential: jira-token
  - name: locked
    hosts: [locked.test]
    intercept: false
    upstream: https://localhost:{port}
policy: {{ files: [policy/*.rego] }}
credentials:
  jira-token: {{ kind: secret, file: secrets/jira, header: Authorization, format: "Bearer {{}}" }}
limits: {{ connect_timeout: 2s, upstream_timeout: 5s, shutdown_timeout: 1s }}
tls:
  upstream_ca: {tool_ca}
  {ca_line}
"#,
        port = tool.addr.port(),
        tool_ca = tool_ca_path.display(),
    );
    let tg = Toolgate::start(
        &config,
        &[
            ("policy/main.rego", POLICY),
            ("secrets/jira", &format!("{SECRET}\n")),
        ],
    );
    Setup {
        tg,
        tool,
        ca,
        tool_ca: tool_ca_path,
        _keep: keep,
    }
}

/// One curl transfer's outcome: status, body, content type and new connections it opened.
#[derive(Debug)]
struct Transfer {
    status: u16,
    body: String,
    content_type: String,
    connects: u32,
}

/// Run curl with `transfers` (each a list of arguments for one URL, joined with `--next`);
/// every transfer goes through `proxy` trusting `cacert`.
fn curl(proxy: SocketAddr, cacert: &Path, transfers: &[Vec<String>]) -> (Vec<Transfer>, String) {
    const MARK: &str = "\n--toolgate-test--";
    let mut cmd = Command::new("curl");
    for (i, t) in transfers.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--max-time", "10", "-x"])
            .arg(format!("http://{proxy}"))
            .arg("--cacert")
            .arg(cacert)
            .arg("-w")
            .arg(format!(
                "{MARK} %{{http_code}} %{{num_connects}} %{{content_type}}\n"
            ))
            .args(t);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut transfers = Vec::new();
    let mut rest = stdout.as_str();
    while let Some(i) = rest.find(MARK) {
        let body = rest[..i].to_string();
        let line_end = rest[i + MARK.len()..].find('\n').unwrap() + i + MARK.len();
        let fields: Vec<&str> = rest[i + MARK.len()..line_end].split_whitespace().collect();
        transfers.push(Transfer {
            status: fields[0].parse().unwrap(),
            connects: fields[1].parse().unwrap(),
            content_type: fields.get(2).unwrap_or(&"").to_string(),
            body,
        });
        rest = &rest[line_end + 1..];
    }
    (transfers, stderr)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_through_a_tunnel_gets_allow_deny_allow_on_one_connection_with_the_credential_injected(
) {
    let s = setup(true).await;
    let agent = [
        "-H",
        "authorization: Bearer agent-own-token",
        "-H",
        "x-toolgate-task: T-9",
    ];
    let read = |issue: &str| {
        let mut a = args(&agent);
        a.push(format!("https://jira.test/rest/api/3/issue/{issue}"));
        a
    };
    let mut delete = args(&agent);
    delete.extend(args(&[
        "-X",
        "DELETE",
        "https://jira.test/rest/api/3/issue/SUP-1",
    ]));
    let (t, stderr) = curl(s.tg.proxy, &s.ca, &[read("SUP-1"), delete, read("SUP-2")]);
    assert_eq!(t.len(), 3, "{t:?} {stderr}\n{}", s.tg.logs());

    assert_eq!(
        (t[0].status, t[0].body.as_str()),
        (200, r#"{"ok":true}"#),
        "{stderr}"
    );
    assert_eq!(t[1].status, 403);
    assert_eq!(t[1].content_type, "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&t[1].body).unwrap();
    assert_eq!(problem["type"], "urn:toolgate:problem:denied");
    assert_eq!(problem["action"], "ticket.delete");
    assert_eq!(problem["detail"], "deleting tickets needs a human");
    assert_eq!(t[2].status, 200);
    // One tunnel: the first transfer connected, the next two reused it.
    assert_eq!(
        t.iter().map(|t| t.connects).collect::<Vec<_>>(),
        [1, 0, 0],
        "{t:?}"
    );
    assert_eq!(
        s.tg.logs().matches("tunnel opened").count(),
        1,
        "{}",
        s.tg.logs()
    );

    let got = s.tool.received();
    assert_eq!(
        got.len(),
        2,
        "the denied request must not reach the tool: {got:#?}"
    );
    for (r, issue) in got.iter().zip(["SUP-1", "SUP-2"]) {
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, format!("/rest/api/3/issue/{issue}"));
        assert_eq!(r.headers["authorization"], format!("Bearer {SECRET}"));
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
        assert!(!r.headers.contains_key("x-toolgate-task"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ip_target_is_intercepted_with_an_ip_san_certificate() {
    let s = setup(true).await;
    // curl sends no SNI for an IP literal and verifies the certificate's IP SAN.
    let (t, stderr) = curl(
        s.tg.proxy,
        &s.ca,
        &[args(&["https://127.0.0.1/rest/api/3/issue/SUP-3"])],
    );
    assert_eq!(
        t.first().map(|t| t.status),
        Some(200),
        "{stderr}\n{}",
        s.tg.logs()
    );
    assert_eq!(
        s.tool.only().headers["authorization"],
        format!("Bearer {SECRET}")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_to_an_unlisted_host_is_refused_before_any_tls() {
    let s = setup(true).await;
    // A real listener stands at the unlisted destination: it must see no connection at all.
    let elsewhere = StdListener::bind("127.0.0.2:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let target = elsewhere.local_addr().unwrap();
    let reply = raw_connect(s.tg.proxy, &format!("evil.test:{}", target.port()), b"");
    assert!(reply.starts_with("HTTP/1.1 403 "), "{reply}");
    assert!(
        reply.contains("content-type: application/problem+json"),
        "{reply}"
    );
    let body: serde_json::Value =
        serde_json::from_str(reply.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["type"], "urn:toolgate:problem:denied");
    assert_eq!(body["action"], "unknown");
    assert!(
        body["detail"].as_str().unwrap().contains("evil.test"),
        "{body}"
    );
    let reply = raw_connect(s.tg.proxy, &target.to_string(), b"");
    assert!(reply.starts_with("HTTP/1.1 403 "), "{reply}");
    assert!(
        matches!(elsewhere.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "toolgate connected to the unlisted destination"
    );

    // curl reports the refused tunnel.
    let (_, stderr) = curl(s.tg.proxy, &s.ca, &[args(&["https://evil.test/"])]);
    assert!(stderr.contains("403"), "{stderr}");
    assert!(s.tool.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_to_another_port_of_a_catalogued_host_is_refused_before_any_tls() {
    let s = setup(true).await;
    // `jira.test` is catalogued without a port: only 443 is jira for a tunnel.
    for target in ["jira.test:8443", "jira.test:80", "127.0.0.1:8443"] {
        let reply = raw_connect(s.tg.proxy, target, b"");
        assert!(reply.starts_with("HTTP/1.1 403 "), "{target}: {reply}");
        assert!(reply.contains(r#""action":"unknown""#), "{target}: {reply}");
    }
    // Positive control: the default port is the tool, tunnelled and served.
    let (t, stderr) = curl(
        s.tg.proxy,
        &s.ca,
        &[args(&["https://jira.test/rest/api/3/issue/SUP-1"])],
    );
    assert_eq!(t.first().map(|t| t.status), Some(200), "{stderr}");
    assert_eq!(
        s.tool.only().headers["authorization"],
        format!("Bearer {SECRET}")
    );
}

#[test]
fn check_warns_about_a_plain_http_upstream_naming_the_tool() {
    let dir = tempfile::tempdir().unwrap();
    support::write(
        dir.path(),
        "policy.rego",
        "package toolgate\ndefault decision := false\n",
    );
    let config = |upstream: &str| {
        format!(
            "agent: {{ id: spiffe://test/agent }}\ntools:\n  - {{ name: legacy, hosts: [legacy.test], upstream: \"{upstream}\" }}\npolicy: {{ files: [policy.rego] }}\n"
        )
    };
    let check = |upstream: &str| {
        support::write(dir.path(), "toolgate.yaml", &config(upstream));
        let out = Command::new(support::binary())
            .args(["check", "-c"])
            .arg(dir.path().join("toolgate.yaml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let stderr = check("http://10.0.0.7:8080");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.ends_with(
            "toolgate.yaml: tools[0].upstream: tool \"legacy\" is sent plain HTTP: its requests, and any credential injected into them, cross the network unencrypted; use https:// unless that network is trusted"
        ),
        "{warning}"
    );
    // Positive control: https loads without a word.
    assert_eq!(check("https://legacy.internal"), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spoofed_host_inside_a_tunnel_is_rejected_and_the_tool_receives_nothing() {
    let s = setup(true).await;
    let (t, stderr) = curl(
        s.tg.proxy,
        &s.ca,
        &[args(&[
            "-H",
            "Host: localhost",
            "https://jira.test/rest/api/3/issue/SUP-1",
        ])],
    );
    assert_eq!(t.first().map(|t| t.status), Some(400), "{stderr}");
    let problem: serde_json::Value = serde_json::from_str(&t[0].body).unwrap();
    assert_eq!(problem["type"], "urn:toolgate:problem:rejected");
    assert!(
        problem["detail"].as_str().unwrap().contains("localhost"),
        "{problem}"
    );
    assert!(s.tool.received().is_empty(), "{:#?}", s.tool.received());
}

#[tokio::test(flavor = "multi_thread")]
async fn non_tls_bytes_after_connect_close_the_tunnel_with_a_logged_reason() {
    let s = setup(true).await;
    let reply = raw_connect(
        s.tg.proxy,
        "jira.test:443",
        b"GET /rest/api/3/issue/SUP-1 HTTP/1.1\r\nHost: jira.test\r\n\r\n",
    );
    assert_eq!(reply, "HTTP/1.1 200 Connection established\r\n\r\n");
    assert!(s.tg.wait_for_log("non-TLS bytes"), "{}", s.tg.logs());
    assert!(s.tool.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_heads_over_the_limit_and_malformed_targets_are_rejected() {
    let s = setup(true).await;
    let padding = format!("X-Pad: {}\r\n", "a".repeat(9000));
    let reply = raw(
        s.tg.proxy,
        format!("CONNECT jira.test:443 HTTP/1.1\r\n{padding}\r\n").as_bytes(),
    );
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(reply.contains("over 8192 bytes"), "{reply}");
    let reply = raw(s.tg.proxy, b"CONNECT jira.test HTTP/1.1\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(reply.contains("authority-form"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_ca_interception_is_refused_with_a_reason() {
    let s = setup(false).await;
    let reply = raw_connect(s.tg.proxy, "jira.test:443", b"");
    assert!(reply.starts_with("HTTP/1.1 502 "), "{reply}");
    assert!(
        reply.contains("urn:toolgate:problem:interception-unavailable"),
        "{reply}"
    );
    assert!(reply.contains("tls.ca"), "{reply}");
    let (status, body) = support::http_get(s.tg.admin, "/ca.pem").unwrap();
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn intercept_false_splices_after_a_host_only_decision_without_a_credential() {
    let s = setup(true).await;
    // The agent verifies the tool's own certificate: toolgate does not terminate this TLS.
    let url = format!("https://localhost:{}/secret/path", s.tool.addr.port());
    let (t, stderr) = curl(
        s.tg.proxy,
        &s.tool_ca,
        &[args(&["-H", "authorization: Bearer agent-own-token", &url])],
    );
    assert_eq!(
        t.first().map(|t| t.status),
        Some(200),
        "{stderr}\n{}",
        s.tg.logs()
    );
    let got = s.tool.only();
    assert_eq!(got.target, "/secret/path");
    assert_eq!(
        got.headers["authorization"], "Bearer agent-own-token",
        "a spliced tunnel carries the agent's own bytes, no injected credential"
    );
    assert!(s.tg.wait_for_log("tunnel spliced"), "{}", s.tg.logs());
    // The decision log's own thread may write the line after the access log's.
    let decisions = s.tg.wait_for_stdout(r#""action":"vault.connect""#);
    assert!(
        decisions.contains(r#""action":"vault.connect""#),
        "{decisions}"
    );

    // Another non-intercepted tool the policy does not allow: refused on the CONNECT.
    let reply = raw_connect(s.tg.proxy, "locked.test:443", b"");
    assert!(reply.starts_with("HTTP/1.1 403 "), "{reply}");
    assert!(reply.contains(r#""action":"locked.connect""#), "{reply}");
    assert_eq!(s.tool.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_serves_the_ca_certificate_for_trust_bundles() {
    let s = setup(true).await;
    let (status, body) = support::http_get(s.tg.admin, "/ca.pem").unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read_to_string(&s.ca).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requests_with_https_proxy_gets_allow_deny_allow_through_one_tunnel() {
    let s = setup(true).await;
    let script = r#"
import json, os, requests
session = requests.Session()
out = []
for method, issue in [("GET", "SUP-1"), ("DELETE", "SUP-1"), ("GET", "SUP-2")]:
    r = session.request(method, f"https://jira.test/rest/api/3/issue/{issue}",
                        headers={"authorization": "Bearer agent-own-token"}, timeout=10)
    out.append({"status": r.status_code, "type": r.headers.get("content-type"), "body": r.text})
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .env("HTTPS_PROXY", s.tg.proxy_url())
        .env("REQUESTS_CA_BUNDLE", &s.ca)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.tg.logs()
    );
    let results: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let statuses: Vec<u64> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 403, 200]);
    assert_eq!(results[1]["type"], "application/problem+json");
    assert!(results[1]["body"]
        .as_str()
        .unwrap()
        .contains("ticket.delete"));
    assert_eq!(
        s.tg.logs().matches("tunnel opened").count(),
        1,
        "{}",
        s.tg.logs()
    );
    let got = s.tool.received();
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .all(|r| r.headers["authorization"] == format!("Bearer {SECRET}")));
}

/// Send `CONNECT target`, then `after`; return everything read until toolgate closes.
fn raw_connect(proxy: SocketAddr, target: &str, after: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut out = Vec::new();
    if !after.is_empty() {
        // Wait for the 200 before sending what follows, as a client would.
        let mut head = [0u8; 39];
        s.read_exact(&mut head).unwrap();
        out.extend_from_slice(&head);
        s.write_all(after).unwrap();
    }
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn raw(proxy: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
