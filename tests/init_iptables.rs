//! `toolgate init-iptables`: the printed rules, and the applied rules redirecting an agent's
//! traffic inside network namespaces this test creates and removes (needs root, as CI has).
//!
//! Topology: namespace `agent` (192.0.2.1) ── veth ── namespace `tool` (192.0.2.2). A listener
//! on 127.0.0.1:15006 in `agent` stands in for toolgate's transparent listener; the tool
//! listens on 192.0.2.2:80, :443 and :8080. Both answer with their name and the original
//! destination they recovered with SO_ORIGINAL_DST. The agent's client is curl, run as
//! several uids with `setpriv`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const BINARY: &str = env!("CARGO_BIN_EXE_toolgate");
const LISTENER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netns/listener.py");
const TOOL_IP: &str = "192.0.2.2";

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

/// Two network namespaces joined by a veth pair; deleted (with everything in them) on drop.
struct Namespaces {
    agent: String,
    tool: String,
    children: Vec<Child>,
}

impl Namespaces {
    fn create() -> Namespaces {
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
        let ns = Namespaces {
            agent: format!("tg8-agent-{tag}"),
            tool: format!("tg8-tool-{tag}"),
            children: Vec::new(),
        };
        ip(&["netns", "add", &ns.agent]);
        ip(&["netns", "add", &ns.tool]);
        // Interface names are per namespace, so fixed names cannot collide between tests.
        ip(&[
            "link",
            "add",
            "veth-agent",
            "netns",
            &ns.agent,
            "type",
            "veth",
            "peer",
            "name",
            "veth-tool",
            "netns",
            &ns.tool,
        ]);
        for (n, dev, addr) in [
            (&ns.agent, "veth-agent", "192.0.2.1/24"),
            (&ns.tool, "veth-tool", "192.0.2.2/24"),
        ] {
            ip(&["-n", n, "addr", "add", addr, "dev", dev]);
            ip(&["-n", n, "link", "set", dev, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ns
    }

    fn exec(ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        cmd
    }

    /// Start the listener in namespace `ns` and wait until it listens.
    fn listen(&mut self, ns: &str, name: &str, host: &str, ports: &[u16]) {
        let mut cmd = Namespaces::exec(ns);
        cmd.args(["python3", LISTENER, name, host])
            .args(ports.iter().map(u16::to_string))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.children.push(child);
        assert_eq!(line.trim(), "ready", "{name} listener did not start");
    }

    /// `toolgate init-iptables ARGS` inside the agent namespace.
    fn init_iptables(&self, args: &[&str]) -> String {
        let out = run(Namespaces::exec(&self.agent)
            .args([BINARY, "init-iptables"])
            .args(args));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The agent namespace's `nat` table as `iptables -S` prints it.
    fn nat_rules(&self) -> Vec<String> {
        let out = run(Namespaces::exec(&self.agent).args(["iptables", "-t", "nat", "-S"]));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// curl `url` from the agent namespace as `uid`; returns the body, or the failure.
    fn curl_as(&self, uid: u32, url: &str) -> String {
        let uid = uid.to_string();
        let out = Namespaces::exec(&self.agent)
            .args([
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
            ])
            .args(["curl", "-sS", "--max-time", "5", url])
            .output()
            .unwrap();
        if out.status.success() {
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        } else {
            format!(
                "curl failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.agent, &self.tool] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Who answered: the first word of a listener's reply (`tool` or `transparent`). Where no
/// redirect happened, what SO_ORIGINAL_DST reports depends on whether conntrack tracks the
/// namespace, so only redirected replies are compared whole.
fn who(reply: &str) -> &str {
    reply.split(' ').next().unwrap_or_default()
}

/// Start the stand-in transparent listener and the tool.
fn topology() -> Namespaces {
    let mut ns = Namespaces::create();
    let (agent, tool) = (ns.agent.clone(), ns.tool.clone());
    ns.listen(&agent, "transparent", "127.0.0.1", &[15006]);
    ns.listen(&tool, "tool", "0.0.0.0", &[80, 443, 8080]);
    ns
}

#[test]
fn redirects_the_agents_web_traffic_and_exempts_the_proxy_uid() {
    let ns = topology();
    // Before capture, the agent reaches the tool directly.
    assert_eq!(
        who(&ns.curl_as(1000, &format!("http://{TOOL_IP}/"))),
        "tool"
    );

    let out = ns.init_iptables(&[]);
    assert!(out.contains("jump from OUTPUT added"), "{out}");

    // The agent, whatever uid it runs as, lands on the transparent port; the listener
    // recovers where the agent meant to go.
    for uid in [1000, 0, 65534] {
        assert_eq!(
            ns.curl_as(uid, &format!("http://{TOOL_IP}/issue/1")),
            format!("transparent {TOOL_IP}:80"),
            "uid {uid}"
        );
    }
    assert_eq!(
        ns.curl_as(1000, &format!("http://{TOOL_IP}:443/")),
        format!("transparent {TOOL_IP}:443")
    );
    // toolgate's own upstream connections (uid 1337) are never redirected: no loop.
    assert_eq!(
        who(&ns.curl_as(1337, &format!("http://{TOOL_IP}/"))),
        "tool"
    );
    // Ports outside --ports are not captured.
    assert_eq!(
        who(&ns.curl_as(1000, &format!("http://{TOOL_IP}:8080/"))),
        "tool"
    );
    // Loopback is not captured: the agent still reaches toolgate's own listeners.
    assert_eq!(
        who(&ns.curl_as(1000, "http://127.0.0.1:15006/")),
        "transparent"
    );
}

#[test]
fn rerunning_replaces_the_rules_instead_of_adding_more() {
    let ns = topology();
    ns.init_iptables(&[]);
    let first = ns.nat_rules();
    let out = ns.init_iptables(&[]);
    assert!(out.contains("jump from OUTPUT already present"), "{out}");
    assert_eq!(ns.nat_rules(), first, "a rerun changed the rules");
    let jumps = first
        .iter()
        .filter(|r| r.as_str() == "-A OUTPUT -p tcp -j TOOLGATE_OUTPUT")
        .count();
    assert_eq!(jumps, 1, "{first:#?}");

    // A rerun with different settings replaces the chain's contents: the tool's address is
    // now excluded, and only port 8080 is captured.
    ns.init_iptables(&["--exclude-cidrs", "192.0.2.2/32", "--ports", "8080"]);
    let second = ns.nat_rules();
    assert!(
        second
            .iter()
            .any(|r| r.contains("-d 192.0.2.2/32 -j RETURN")),
        "{second:#?}"
    );
    assert!(
        !second.iter().any(|r| r.contains("--dport 80 ")),
        "{second:#?}"
    );
    assert_eq!(
        who(&ns.curl_as(1000, &format!("http://{TOOL_IP}/"))),
        "tool"
    );
    assert_eq!(
        who(&ns.curl_as(1000, &format!("http://{TOOL_IP}:8080/"))),
        "tool"
    );

    ns.init_iptables(&["--include-cidrs", "192.0.2.0/24", "--ports", "8080"]);
    assert_eq!(
        ns.curl_as(1000, &format!("http://{TOOL_IP}:8080/")),
        format!("transparent {TOOL_IP}:8080")
    );
    assert_eq!(
        who(&ns.curl_as(1000, &format!("http://{TOOL_IP}/"))),
        "tool"
    );
}

#[test]
fn dry_run_prints_the_restore_input_without_touching_iptables() {
    let out = run(Command::new(BINARY).args([
        "init-iptables",
        "--dry-run",
        "--exclude-cidrs",
        "10.96.0.0/12",
        "--exclude-ports",
        "5432",
    ]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("*nat\n:TOOLGATE_OUTPUT - [0:0]\n"),
        "{text}"
    );
    for rule in [
        "-A TOOLGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A TOOLGATE_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A TOOLGATE_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A TOOLGATE_OUTPUT -p tcp --dport 443 -j REDIRECT --to-ports 15006",
        "-A OUTPUT -p tcp -j TOOLGATE_OUTPUT",
    ] {
        assert!(text.lines().any(|l| l == rule), "missing {rule}:\n{text}");
    }
    assert!(text.ends_with("COMMIT\n"), "{text}");
}

#[test]
fn bad_arguments_exit_2_with_the_reason() {
    for (args, reason) in [
        (
            vec!["--exclude-cidrs", "10.1.2.3/8"],
            "has host bits set: did you mean 10.0.0.0/8?",
        ),
        (
            vec!["--ports", "80,15000"],
            "--ports must not contain the admin port",
        ),
        (vec!["--proxy-uid", "0"], "--proxy-uid 0 would exempt"),
    ] {
        let out = Command::new(BINARY)
            .args(["init-iptables", "--dry-run"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed rules");
    }
}
