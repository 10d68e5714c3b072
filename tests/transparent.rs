//! Transparent capture end to end, in network namespaces this test creates and removes (needs
//! root, as CI has): the real toolgate runs in the agent's namespace as uid 1337 with
//! `listen.transparent`, `toolgate init-iptables` redirects the agent's TCP 80/443 to it, and
//! plain curl — with no proxy settings — reaches a tool in another namespace only through
//! toolgate: classified, decided, the credential injected.
//!
//! Topology: namespace `agent` (192.0.2.1, fd00::1) ── veth ── namespace `tool` (192.0.2.2,
//! fd00::2; plain HTTP on :80, :8080 and :8081, HTTPS on :443, tests/netns/tool.py, which logs
//! every request it receives). `jira.test` resolves to 192.0.2.2 in the agent namespace
//! through /etc/netns/<agent>/hosts, which `ip netns exec` mounts over /etc/hosts — for
//! toolgate (which runs there) as for the agent.
//!
//! The tool has no `upstream`: toolgate reaches it over TLS on port 443 whatever scheme the
//! agent used, and no credential ever reaches one of its plain-HTTP ports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::TestCa;

const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netns/tool.py");
const TOOL_IP: &str = "192.0.2.2";
const TOOL_IP6: &str = "fd00::2";
const SECRET: &str = "jira-secret-value-7f3a";
const PROXY_UID: u32 = 1337;
const AGENT_UID: u32 = 1000;

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read"

decision := {"allow": false, "reason": "deleting tickets needs a human"} if input.action.name == "ticket.delete"

decision := {"allow": true, "reason": "vault is spliced"} if input.action.name == "vault.connect"

# A careless rule: another port of the tool's host is `unknown`, and this names a credential
# for it anyway. toolgate refuses to send a credential to a destination no tool serves.
decision := {"allow": true, "reason": "port 8080 is open", "credential": {"name": "jira-token"}} if {
	input.action.name == "unknown"
	input.request.port == 8080
}

decision := {"allow": true, "reason": "port 8081 is open"} if {
	input.action.name == "unknown"
	input.request.port == 8081
}
"#;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Two namespaces joined by a veth pair, with the agent's hosts file; removed on drop.
struct Pod {
    agent: String,
    tool: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
    /// Whether the kernel has IPv6: the namespaces then have IPv6 addresses too.
    ipv6: bool,
}

impl Pod {
    fn create() -> Pod {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        assert!(
            Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout == b"0\n"),
            "this test creates network namespaces and needs root (CI runs as root)"
        );
        let tag = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pod = Pod {
            agent: format!("tgt-agent-{tag}"),
            tool: format!("tgt-tool-{tag}"),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            ipv6: Path::new("/proc/net/if_inet6").exists(),
        };
        // Before anything runs in the namespace: `ip netns exec` mounts it over /etc/hosts.
        let etc = pod.etc();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("hosts"),
            format!("127.0.0.1 localhost\n{TOOL_IP} jira.test\n"),
        )
        .unwrap();
        ip(&["netns", "add", &pod.agent]);
        ip(&["netns", "add", &pod.tool]);
        ip(&[
            "link",
            "add",
            "veth-agent",
            "netns",
            &pod.agent,
            "type",
            "veth",
            "peer",
            "name",
            "veth-tool",
            "netns",
            &pod.tool,
        ]);
        for (n, dev, addr) in [
            (&pod.agent, "veth-agent", "192.0.2.1/24"),
            (&pod.tool, "veth-tool", "192.0.2.2/24"),
        ] {
            ip(&["-n", n, "addr", "add", addr, "dev", dev]);
            ip(&["-n", n, "link", "set", dev, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        // A second tool address, for the tool that is spliced rather than intercepted.
        ip(&[
            "-n",
            &pod.tool,
            "addr",
            "add",
            "192.0.2.3/24",
            "dev",
            "veth-tool",
        ]);
        if pod.ipv6 {
            for (n, dev, addr) in [
                (&pod.agent, "veth-agent", "fd00::1/64"),
                (&pod.tool, "veth-tool", "fd00::2/64"),
            ] {
                ip(&["-n", n, "-6", "addr", "add", addr, "dev", dev, "nodad"]);
            }
        }
        pod
    }

    fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.agent)
    }

    fn exec(ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        cmd
    }

    /// Write `contents` under the pod's directory, readable by toolgate's uid.
    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Start the tool: plain HTTP on 80, 8080 and 8081, HTTPS on 443, logging each request.
    fn start_tool(&mut self, ca: &TestCa) {
        let cert = self.file("tool/cert.pem", &ca.leaf_pem());
        let key = self.file("tool/key.pem", &ca.leaf_key_pem());
        let hosts = if self.ipv6 { "0.0.0.0,::" } else { "0.0.0.0" };
        let mut child = Pod::exec(&self.tool)
            .args(["python3", TOOL, "--hosts", hosts])
            .args(["--http", "80,8080,8081", "--https", "443"])
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--log")
            .arg(self.tool_log_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.children.push(child);
        assert_eq!(line.trim(), "ready", "the tool did not start");
    }

    fn tool_log_path(&self) -> PathBuf {
        self.dir.path().join("tool-received.jsonl")
    }

    /// The last request the tool received (what it saw; its answer to the agent may be
    /// masked where it echoes the injected credential).
    fn last_received(&self) -> serde_json::Value {
        self.tool_received()
            .pop()
            .unwrap_or_else(|| panic!("the tool received nothing"))
    }

    /// Every request the tool received, on any port, in order.
    fn tool_received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.tool_log_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Start toolgate in the agent namespace as uid 1337 and wait until it is ready.
    fn start_toolgate(&mut self, config: &Path) -> PathBuf {
        let log = self.dir.path().join("toolgate.log");
        let uid = PROXY_UID.to_string();
        let child = Pod::exec(&self.agent)
            .args([
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
            ])
            .args([support::binary(), "run", "-c"])
            .arg(config)
            .env("TOOLGATE_LOG", "info")
            .stdout(Stdio::from(
                std::fs::File::create(self.dir.path().join("decisions.log")).unwrap(),
            ))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Pod::exec(&self.agent)
                .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg("http://127.0.0.1:15000/readyz")
                .output()
                .unwrap();
            if out.stdout == b"200" {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "toolgate did not become ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// curl from the agent namespace as `uid` (no proxy settings); returns status and body.
    fn curl_as(&self, uid: u32, args: &[&str]) -> (u16, String) {
        let mut all = vec!["--noproxy", "*"];
        all.extend_from_slice(args);
        self.curl_with(uid, &all)
    }

    /// curl from the agent namespace as `uid` with exactly `args` (e.g. `-x` for the proxy
    /// listener); returns status and body.
    fn curl_with(&self, uid: u32, args: &[&str]) -> (u16, String) {
        let uid = uid.to_string();
        let out = Pod::exec(&self.agent)
            .args([
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
            ])
            .args(["curl", "-gsS", "--max-time", "10"])
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
        let status = status.trim().parse().unwrap_or(0);
        if status == 0 {
            return (0, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        (status, body.to_string())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.agent, &self.tool] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// Give the pod's files to toolgate's uid (it runs unprivileged, as in the chart).
fn chown_all(dir: &Path) {
    std::os::unix::fs::chown(dir, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            chown_all(&path);
        } else {
            std::os::unix::fs::chown(&path, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
        }
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A pod with the tool running, toolgate serving the jira/vault catalog (neither with an
/// `upstream`) and `toolgate init-iptables ARGS` applied.
fn jira_pod(init_args: &[&str]) -> (Pod, PathBuf, String) {
    let mut pod = Pod::create();
    let tool_ca = TestCa::for_names(&[TOOL_IP, "jira.test", "192.0.2.3", TOOL_IP6]);
    pod.start_tool(&tool_ca);

    let dir = pod.dir.path().to_path_buf();
    run(Command::new(support::binary())
        .args(["ca", "init", "--cert"])
        .arg(dir.join("ca.pem"))
        .arg("--key")
        .arg(dir.join("ca-key.pem")));
    pod.file("tool-ca.pem", &tool_ca.ca_pem);
    pod.file("policy/main.rego", POLICY);
    pod.file("secrets/jira", &format!("{SECRET}\n"));
    let config = pod.file(
        "toolgate.yaml",
        &format!(
            r#"
listen: {{ proxy: 127.0.0.1:15001, transparent: 127.0.0.1:15006, admin: 127.0.0.1:15000 }}
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: jira
    hosts: [{TOOL_IP}, jira.test, "[{TOOL_IP6}]"]
    credential: jira-token
    actions:
      - name: ticket.read
        match: {{ method: GET, path: "/rest/api/3/issue/{{issue}}" }}
      - name: ticket.delete
        match: {{ method: DELETE, path: "/rest/api/3/issue/{{issue}}" }}
  - name: vault
    hosts: [192.0.2.3]
    intercept: false
    credential: jira-token
policy: {{ files: [policy/*.rego] }}
credentials:
  jira-token: {{ kind: secret, file: secrets/jira, header: Authorization, format: "Bearer {{}}" }}
limits: {{ connect_timeout: 2s, upstream_timeout: 5s, shutdown_timeout: 1s }}
tls: {{ ca: {{ cert: ca.pem, key: ca-key.pem }}, upstream_ca: tool-ca.pem }}
"#
        ),
    );
    chown_all(&dir);
    let log = pod.start_toolgate(&config);
    let out = run(Pod::exec(&pod.agent)
        .args([support::binary(), "init-iptables"])
        .args(init_args));
    (pod, log, String::from_utf8(out.stdout).unwrap())
}

#[test]
fn redirected_http_and_https_are_classified_decided_and_injected_and_the_proxy_uid_is_exempt() {
    let (pod, log, _) = jira_pod(&[]);
    let dir = pod.dir.path().to_path_buf();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let agent_auth = "authorization: Bearer agent-own-token";

    // Plain HTTP to the tool's address: redirected, classified by Host, credential injected
    // — and sent to the tool over TLS on 443 (it has no `upstream`: http:// is upgraded).
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &[
            "-H",
            agent_auth,
            &format!("http://{TOOL_IP}/rest/api/3/issue/SUP-1"),
        ],
    );
    assert_eq!(status, 200, "{body}\n{}", logs());
    let got = pod.last_received();
    assert_eq!(got["target"], "/rest/api/3/issue/SUP-1");
    assert_eq!(
        (got["tls"].as_bool(), got["port"].as_u64()),
        (Some(true), Some(443))
    );
    assert_eq!(got["headers"]["authorization"], format!("Bearer {SECRET}"));

    // A denied action never leaves the namespace.
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &[
            "-X",
            "DELETE",
            &format!("http://{TOOL_IP}/rest/api/3/issue/SUP-1"),
        ],
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["action"], "ticket.delete");

    // HTTPS to the address (no SNI): intercepted with an IP-SAN leaf, re-encrypted upstream.
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &[
            "--cacert",
            ca,
            "-H",
            agent_auth,
            &format!("https://{TOOL_IP}/rest/api/3/issue/SUP-2"),
        ],
    );
    assert_eq!(status, 200, "{body}\n{}", logs());
    let got = pod.last_received();
    assert_eq!(got["tls"], true);
    assert_eq!(got["headers"]["authorization"], format!("Bearer {SECRET}"));

    // HTTPS by name: the SNI names the tool and resolves to the address connected to.
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &["--cacert", ca, "https://jira.test/rest/api/3/issue/SUP-3"],
    );
    assert_eq!(status, 200, "{body}\n{}", logs());
    assert_eq!(
        pod.last_received()["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &[
            "--cacert",
            ca,
            "-X",
            "DELETE",
            "https://jira.test/rest/api/3/issue/SUP-3",
        ],
    );
    assert_eq!(status, 403, "{body}");

    // `intercept: false`: decided by host (vault.connect), spliced to the original address;
    // the agent verifies the tool's own certificate and its own credential arrives.
    let tool_ca_pem = dir.join("tool-ca.pem");
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &[
            "--cacert",
            tool_ca_pem.to_str().unwrap(),
            "-H",
            agent_auth,
            "https://192.0.2.3/v1/secret",
        ],
    );
    assert_eq!(status, 200, "{body}\n{}", logs());
    let got = pod.last_received();
    assert_eq!(
        (got["tls"].as_bool(), got["target"].as_str()),
        (Some(true), Some("/v1/secret"))
    );
    assert_eq!(got["headers"]["authorization"], "Bearer agent-own-token");

    // A Host that does not name the address connected to is refused.
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &[
            "-H",
            "Host: jira.evil",
            &format!("http://{TOOL_IP}/rest/api/3/issue/SUP-1"),
        ],
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("does not name") || body.contains("cannot resolve"),
        "{body}"
    );

    // toolgate's own uid is not redirected: it reaches the tool as it is, nothing injected.
    let (status, body) = pod.curl_as(
        PROXY_UID,
        &[
            "-H",
            agent_auth,
            &format!("http://{TOOL_IP}/rest/api/3/issue/SUP-1"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        pod.last_received()["headers"]["authorization"],
        "Bearer agent-own-token"
    );

    let decisions = std::fs::read_to_string(dir.join("decisions.log")).unwrap();
    assert_eq!(
        decisions.matches(r#""action":"ticket.read""#).count(),
        3,
        "{decisions}"
    );
    assert!(
        decisions.contains(r#""action":"vault.connect""#),
        "{decisions}"
    );
    assert!(
        logs().contains("via=\"transparent\"") || logs().contains("via=transparent"),
        "{}",
        logs()
    );
}

#[test]
fn http_to_a_tool_without_upstream_goes_over_tls_and_no_credential_reaches_a_plain_port() {
    // 8080 and 8081 are captured too: the agent cannot reach them but through toolgate.
    let (pod, log, _) = jira_pod(&["--ports", "80,443,8080,8081"]);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let ca = pod.dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let proxy = "http://127.0.0.1:15001";
    let delivered = |status: u16, body: &str, target: &str| {
        assert_eq!(status, 200, "{body}\n{}", logs());
        let got = pod.last_received();
        assert_eq!(got["target"], target);
        assert_eq!(
            (got["tls"].as_bool(), got["port"].as_u64()),
            (Some(true), Some(443)),
            "{got}"
        );
        assert_eq!(got["headers"]["authorization"], format!("Bearer {SECRET}"));
    };

    // Positive control: HTTPS carries the credential to the tool's TLS port.
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &["--cacert", ca, "https://jira.test/rest/api/3/issue/SUP-1"],
    );
    delivered(status, &body, "/rest/api/3/issue/SUP-1");
    // The agent's http://, captured or through the forward proxy: upgraded, never cleartext.
    let (status, body) = pod.curl_as(AGENT_UID, &["http://jira.test/rest/api/3/issue/SUP-2"]);
    delivered(status, &body, "/rest/api/3/issue/SUP-2");
    let (status, body) = pod.curl_with(
        AGENT_UID,
        &["-x", proxy, "http://jira.test/rest/api/3/issue/SUP-3"],
    );
    delivered(status, &body, "/rest/api/3/issue/SUP-3");

    // Another port of the catalogued host is no tool: `unknown`. The policy's careless rule
    // names the credential for it; toolgate refuses rather than send it.
    for (status, body) in [
        pod.curl_as(AGENT_UID, &["http://jira.test:8080/rest/api/3/issue/SUP-4"]),
        pod.curl_with(
            AGENT_UID,
            &["-x", proxy, "http://jira.test:8080/rest/api/3/issue/SUP-4"],
        ),
    ] {
        assert_eq!(status, 403, "{body}\n{}", logs());
        let problem = json(&body);
        assert_eq!(problem["type"], "urn:toolgate:problem:policy-error");
        assert_eq!(problem["action"], "unknown");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("no catalogued tool serves"),
            "{problem}"
        );
    }
    // Allowed without a credential, the other port gets the request as asked, bare.
    for (status, body) in [
        pod.curl_as(AGENT_UID, &["http://jira.test:8081/open"]),
        pod.curl_with(AGENT_UID, &["-x", proxy, "http://jira.test:8081/open"]),
    ] {
        assert_eq!(status, 200, "{body}\n{}", logs());
        let got = pod.last_received();
        assert_eq!(
            (got["tls"].as_bool(), got["port"].as_u64()),
            (Some(false), Some(8081))
        );
        assert!(got["headers"].get("authorization").is_none(), "{got}");
    }
    // Plain HTTP for the port captured as TLS: refused before any decision.
    let (status, body) = pod.curl_as(AGENT_UID, &["http://jira.test:443/rest/api/3/issue/SUP-5"]);
    assert_eq!(status, 400, "{body}");
    let problem = json(&body);
    assert_eq!(problem["type"], "urn:toolgate:problem:rejected");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("captured as TLS"),
        "{problem}"
    );

    // What the tool's listeners received: the credential only ever over TLS on 443; its
    // plain ports 80 and 8080 nothing at all; 8081 only the two bare requests.
    let received = pod.tool_received();
    let on = |port: u64| received.iter().filter(|r| r["port"] == port).count();
    assert_eq!(on(443), 3, "{received:#?}");
    assert_eq!((on(80), on(8080), on(8081)), (0, 0, 2), "{received:#?}");
    for r in &received {
        if r.to_string().contains(SECRET) {
            assert_eq!(
                (r["tls"].as_bool(), r["port"].as_u64()),
                (Some(true), Some(443)),
                "{r}"
            );
        }
    }
    assert!(
        !received
            .iter()
            .any(|r| r["target"] == "/rest/api/3/issue/SUP-5"),
        "{received:#?}"
    );
}

#[test]
fn ipv6_egress_is_captured_decided_and_sent_over_tls_like_ipv4() {
    let (pod, log, init) = jira_pod(&[]);
    if !pod.ipv6 {
        assert!(init.contains("IPv6: skipped"), "{init}");
        return;
    }
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let ca = pod.dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();

    // Plain HTTP to the tool's IPv6 address: redirected to toolgate on [::1], upgraded to TLS.
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &[&format!("http://[{TOOL_IP6}]/rest/api/3/issue/SUP-6")],
    );
    assert_eq!(status, 200, "{body}\n{}", logs());
    let got = pod.last_received();
    assert_eq!(
        (got["tls"].as_bool(), got["port"].as_u64()),
        (Some(true), Some(443))
    );
    assert_eq!(got["headers"]["authorization"], format!("Bearer {SECRET}"));
    // HTTPS over IPv6: intercepted with an IP-SAN leaf for the address.
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &[
            "--cacert",
            ca,
            &format!("https://[{TOOL_IP6}]/rest/api/3/issue/SUP-7"),
        ],
    );
    assert_eq!(status, 200, "{body}\n{}", logs());
    assert_eq!(
        pod.last_received()["headers"]["authorization"],
        format!("Bearer {SECRET}")
    );
    // Decided like IPv4: a denied action never reaches the tool.
    let (status, body) = pod.curl_as(
        AGENT_UID,
        &[
            "-X",
            "DELETE",
            &format!("http://[{TOOL_IP6}]/rest/api/3/issue/SUP-6"),
        ],
    );
    assert_eq!(status, 403, "{body}");
    // Positive control: toolgate's own uid is not redirected.
    let (status, body) = pod.curl_as(
        PROXY_UID,
        &[&format!("http://[{TOOL_IP6}]/rest/api/3/issue/SUP-8")],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            pod.last_received()["tls"].as_bool(),
            pod.last_received()["port"].as_u64()
        ),
        (Some(false), Some(80))
    );
    let received = pod.tool_received();
    assert!(
        !received.iter().any(|r| r["method"] == "DELETE"),
        "{received:#?}"
    );
    assert_eq!(received.len(), 3, "{received:#?}");
}

#[test]
fn a_connection_made_straight_to_the_transparent_listener_is_refused() {
    let mut pod = Pod::create();
    let dir = pod.dir.path().to_path_buf();
    pod.file("policy/main.rego", POLICY);
    let config = pod.file(
        "toolgate.yaml",
        r#"
listen: { proxy: 127.0.0.1:15001, transparent: 127.0.0.1:15006, admin: 127.0.0.1:15000 }
agent: { id: spiffe://test/ns/a/sa/agent }
tools: [ { name: jira, hosts: [jira.test] } ]
policy: { files: [policy/*.rego] }
"#,
    );
    chown_all(&dir);
    let log = pod.start_toolgate(&config);
    let (status, body) = pod.curl_as(AGENT_UID, &["http://127.0.0.1:15006/"]);
    assert_eq!(status, 0, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("not redirected")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
