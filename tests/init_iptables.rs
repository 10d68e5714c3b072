//! `toolgate init-iptables`: the printed rules, and the applied rules redirecting an agent's
//! traffic inside network namespaces this test creates and removes (needs root, as CI has).
//!
//! Topology: namespace `agent` (192.0.2.1, fd00::1) ── veth ── namespace `tool` (192.0.2.2,
//! fd00::2). A listener on 127.0.0.1:15006 and [::1]:15006 in `agent` stands in for
//! toolgate's transparent listener; the tool listens on ports 53, 80, 443, 8080 and 8443 (TCP
//! and UDP). Both answer with their name and, over TCP, the original destination they
//! recovered with SO_ORIGINAL_DST. The agent's clients are curl and tests/netns/udp.py, run as
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
const UDP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netns/udp.py");
const TOOL_IP: &str = "192.0.2.2";
const TOOL_IP6: &str = "fd00::2";

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

/// Two network namespaces joined by a veth pair; deleted (with everything in them, and the
/// agent's /etc/netns directory) on drop.
struct Namespaces {
    agent: String,
    tool: String,
    children: Vec<Child>,
    /// Whether the kernel has IPv6: the namespaces then have IPv6 addresses too.
    ipv6: bool,
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
            ipv6: std::path::Path::new("/proc/net/if_inet6").exists(),
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
        if ns.ipv6 {
            // nodad: usable at once, without duplicate address detection's delay.
            for (n, dev, addr) in [
                (&ns.agent, "veth-agent", "fd00::1/64"),
                (&ns.tool, "veth-tool", "fd00::2/64"),
            ] {
                ip(&["-n", n, "-6", "addr", "add", addr, "dev", dev, "nodad"]);
            }
        }
        ns
    }

    /// The agent namespace's /etc/resolv.conf (`ip netns exec` mounts it over the host's).
    fn resolv_conf(&self, text: &str) {
        let etc = std::path::Path::new("/etc/netns").join(&self.agent);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), text).unwrap();
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

    /// The agent namespace's `table` as `program -S` prints it (iptables or ip6tables).
    fn table(&self, program: &str, table: &str) -> Vec<String> {
        let out = run(Namespaces::exec(&self.agent).args([program, "-t", table, "-S"]));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The agent namespace's `nat` table as `iptables -S` prints it.
    fn nat_rules(&self) -> Vec<String> {
        self.table("iptables", "nat")
    }

    /// One UDP datagram from the agent namespace as `uid`: `reply …`, `error …` or `timeout`.
    fn udp_as(&self, uid: u32, host: &str, port: u16) -> String {
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
            .arg(python_for_any_uid())
            .args([UDP, host, &port.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
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
            .args(["curl", "-gsS", "--max-time", "5", url])
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
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&self.agent));
    }
}

/// A python3 every uid can run (a per-user install, e.g. under /root, is not).
fn python_for_any_uid() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("python3")
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
    let (loopback, any) = if ns.ipv6 {
        ("127.0.0.1,::1", "0.0.0.0,::")
    } else {
        ("127.0.0.1", "0.0.0.0")
    };
    ns.listen(&agent, "transparent", loopback, &[15006]);
    ns.listen(&tool, "tool", any, &[53, 80, 443, 8080, 8443]);
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
    assert!(
        out.contains("IPv4: ") && out.contains("jumps from OUTPUT added"),
        "{out}"
    );

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
fn redirects_ipv6_like_ipv4_or_says_why_not() {
    let ns = topology();
    let out = ns.init_iptables(&[]);
    if !ns.ipv6 {
        assert!(
            out.contains("IPv6: skipped, the kernel has no IPv6"),
            "{out}"
        );
        return;
    }
    assert!(
        out.contains("IPv6: ") && out.contains("[::1]:15006"),
        "{out}"
    );
    let url = format!("http://[{TOOL_IP6}]/issue/1");
    // Not only IPv4: an agent that connects over IPv6 lands on the transparent port too.
    for uid in [1000, 0] {
        assert_eq!(
            ns.curl_as(uid, &url),
            format!("transparent [{TOOL_IP6}]:80"),
            "uid {uid}"
        );
    }
    assert_eq!(
        ns.curl_as(1000, &format!("http://[{TOOL_IP6}]:443/")),
        format!("transparent [{TOOL_IP6}]:443")
    );
    // Positive controls: toolgate's uid and an uncaptured port go straight to the tool.
    assert_eq!(who(&ns.curl_as(1337, &url)), "tool");
    assert_eq!(
        who(&ns.curl_as(1000, &format!("http://[{TOOL_IP6}]:8080/"))),
        "tool"
    );
    let v6 = ns.table("ip6tables", "nat");
    assert!(
        v6.iter()
            .any(|r| r
                == "-A TOOLGATE_OUTPUT -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 15006"),
        "{v6:#?}"
    );
}

#[test]
fn udp_to_the_captured_ports_is_refused_so_quic_falls_back_to_tcp() {
    let ns = topology();
    let mut hosts = vec![TOOL_IP];
    if ns.ipv6 {
        hosts.push(TOOL_IP6);
    }
    // Before capture, UDP 443 reaches the tool.
    for host in &hosts {
        assert_eq!(ns.udp_as(1000, host, 443), "reply tool udp", "{host}");
    }
    ns.init_iptables(&[]);
    for host in &hosts {
        let refused = ns.udp_as(1000, host, 443);
        assert!(refused.starts_with("error "), "{host}: {refused}");
        // Positive controls: another UDP port, and toolgate's own uid, still get through;
        // TCP 443 is captured as before.
        assert_eq!(ns.udp_as(1000, host, 8443), "reply tool udp", "{host}");
        assert_eq!(ns.udp_as(1337, host, 443), "reply tool udp", "{host}");
    }
    assert_eq!(
        ns.curl_as(1000, &format!("http://{TOOL_IP}:443/")),
        format!("transparent {TOOL_IP}:443")
    );
}

#[test]
fn deny_other_blocks_direct_egress_while_the_redirect_dns_and_the_proxy_uid_still_work() {
    let ns = topology();
    // The agent's resolver, as the pod's resolv.conf names it.
    ns.resolv_conf("search test\nnameserver 192.0.2.2\n");
    // Before: a direct connection to an uncaptured port works.
    assert_eq!(
        who(&ns.curl_as(1000, &format!("http://{TOOL_IP}:8080/"))),
        "tool"
    );
    let out = ns.init_iptables(&["--egress", "deny-other"]);
    assert!(out.contains("other egress dropped"), "{out}");

    // Denied: direct TCP to a port the capture does not redirect, and any other UDP.
    let direct = ns.curl_as(1000, &format!("http://{TOOL_IP}:8080/"));
    assert!(direct.starts_with("curl failed"), "{direct}");
    let udp = ns.udp_as(1000, TOOL_IP, 8443);
    assert!(udp.starts_with("error "), "{udp}");
    // Positive controls: the redirected port still reaches toolgate; DNS to the resolver
    // from resolv.conf is open; toolgate's own uid goes anywhere.
    assert_eq!(
        ns.curl_as(1000, &format!("http://{TOOL_IP}/issue/1")),
        format!("transparent {TOOL_IP}:80")
    );
    assert_eq!(ns.udp_as(1000, TOOL_IP, 53), "reply tool udp");
    assert_eq!(
        who(&ns.curl_as(1337, &format!("http://{TOOL_IP}:8080/"))),
        "tool"
    );
    if ns.ipv6 {
        let direct = ns.curl_as(1000, &format!("http://[{TOOL_IP6}]:8080/"));
        assert!(direct.starts_with("curl failed"), "{direct}");
        // No IPv6 resolver is configured: IPv6 DNS is dropped like the rest.
        assert!(ns.udp_as(1000, TOOL_IP6, 53).starts_with("error "));
        assert_eq!(
            ns.curl_as(1000, &format!("http://[{TOOL_IP6}]/x")),
            format!("transparent [{TOOL_IP6}]:80")
        );
        assert_eq!(
            who(&ns.curl_as(1337, &format!("http://[{TOOL_IP6}]:8080/"))),
            "tool"
        );
    }

    // An excluded port is let out; rerunning without deny-other opens the rest again.
    ns.init_iptables(&["--egress", "deny-other", "--exclude-ports", "8080"]);
    assert_eq!(
        who(&ns.curl_as(1000, &format!("http://{TOOL_IP}:8080/"))),
        "tool"
    );
    ns.init_iptables(&[]);
    assert_eq!(ns.udp_as(1000, TOOL_IP, 8443), "reply tool udp");

    // Without a resolver to allow, deny-other refuses to run rather than cut DNS off.
    ns.resolv_conf("search test\n");
    let out = Namespaces::exec(&ns.agent)
        .args([BINARY, "init-iptables", "--egress", "deny-other"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --dns-servers"),
        "{out:?}"
    );
}

#[test]
fn rerunning_replaces_the_rules_instead_of_adding_more() {
    let ns = topology();
    ns.init_iptables(&[]);
    let first = ns.nat_rules();
    let filter = ns.table("iptables", "filter");
    let out = ns.init_iptables(&[]);
    assert!(out.contains("jumps from OUTPUT already present"), "{out}");
    assert!(!out.contains("jumps from OUTPUT added"), "{out}");
    assert_eq!(ns.nat_rules(), first, "a rerun changed the rules");
    assert_eq!(ns.table("iptables", "filter"), filter);
    let programs: &[&str] = if ns.ipv6 {
        &["iptables", "ip6tables"]
    } else {
        &["iptables"]
    };
    for program in programs {
        let count = |table: &str, jump: &str| {
            ns.table(program, table)
                .iter()
                .filter(|r| r.as_str() == jump)
                .count()
        };
        assert_eq!(
            count("nat", "-A OUTPUT -p tcp -j TOOLGATE_OUTPUT"),
            1,
            "{program}"
        );
        assert_eq!(
            count("filter", "-A OUTPUT -j TOOLGATE_EGRESS"),
            1,
            "{program}"
        );
    }

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
        "10.96.0.0/12,fd00:10::/108",
        "--exclude-ports",
        "5432",
    ]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("# IPv4: iptables-restore --noflush\n*nat\n:TOOLGATE_OUTPUT - [0:0]\n"),
        "{text}"
    );
    let (v4, v6) = match text.split_once("# IPv6: ip6tables-restore --noflush\n") {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (text.as_str(), None),
    };
    for rule in [
        "-A TOOLGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A TOOLGATE_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A TOOLGATE_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A TOOLGATE_OUTPUT -p tcp --dport 443 -j REDIRECT --to-ports 15006",
        "-A OUTPUT -p tcp -j TOOLGATE_OUTPUT",
        "*filter",
        ":TOOLGATE_EGRESS - [0:0]",
        "-A TOOLGATE_EGRESS -p udp --dport 443 -j REJECT",
        "-A OUTPUT -j TOOLGATE_EGRESS",
    ] {
        assert!(v4.lines().any(|l| l == rule), "missing {rule}:\n{text}");
    }
    assert!(!v4.contains("fd00"), "{text}");
    assert!(!v4.contains("DROP"), "allow-other drops nothing:\n{text}");
    match v6 {
        Some(v6) => {
            for rule in [
                "-A TOOLGATE_OUTPUT -d ::1/128 -j RETURN",
                "-A TOOLGATE_OUTPUT -d fd00:10::/108 -j RETURN",
                "-A TOOLGATE_OUTPUT -p tcp --dport 443 -j REDIRECT --to-ports 15006",
                "-A TOOLGATE_EGRESS -p udp --dport 443 -j REJECT",
            ] {
                assert!(v6.lines().any(|l| l == rule), "missing {rule}:\n{text}");
            }
            assert!(!v6.contains("10.96.0.0"), "{text}");
            assert!(v6.ends_with("COMMIT\n"), "{text}");
        }
        None => assert!(text.contains("# IPv6: skipped"), "{text}"),
    }

    // --ipv6 off prints IPv4 only, and says so.
    let out = run(Command::new(BINARY).args(["init-iptables", "--dry-run", "--ipv6", "off"]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("ip6tables-restore"), "{text}");
    assert!(
        text.ends_with("# IPv6: not captured (--ipv6 off)\n"),
        "{text}"
    );
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
        (
            vec!["--egress", "deny"],
            "expected allow-other or deny-other",
        ),
        (
            vec!["--include-cidrs", "fd00::1/64"],
            "did you mean fd00::/64?",
        ),
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
