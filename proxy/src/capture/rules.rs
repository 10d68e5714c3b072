//! The rule text `toolgate init-iptables` installs, per family, as `iptables-restore` lines.
//!
//! Two chains, each refilled atomically on every run:
//! - `nat` [`CHAIN`] (jumped to from `nat OUTPUT` for TCP): exemptions, then a `REDIRECT` to
//!   the transparent port per included network and captured port.
//! - `filter` [`EGRESS_CHAIN`] (jumped to from `filter OUTPUT`): exemptions, then UDP to the
//!   captured ports is rejected (HTTP/3 clients fall back to TCP, which is captured); with
//!   [`Egress::DenyOther`], everything else the agent sends is dropped, except replies on
//!   connections the pod accepted, IPv6 neighbour discovery, DNS to the configured servers and
//!   the configured exclusions.
//!
//! Redirected connections pass the filter chain as loopback traffic: `nat OUTPUT` runs first
//! and rewrites their destination to 127.0.0.1 or ::1 (the output device the `filter` hook
//! sees is still the original one, so the exemption is by destination).

use super::{dedup, CaptureSpec, Egress, Family, CHAIN, EGRESS_CHAIN};

/// The `nat OUTPUT` rule that sends TCP into [`CHAIN`].
pub(super) const NAT_JUMP: [&str; 4] = ["-p", "tcp", "-j", CHAIN];
/// The `filter OUTPUT` rule that sends everything into [`EGRESS_CHAIN`].
pub(super) const FILTER_JUMP: [&str; 2] = ["-j", EGRESS_CHAIN];

/// ICMPv6 types IPv6 cannot work without (router solicitation, neighbour solicitation and
/// advertisement); the kernel sends them for every socket, owned by no uid.
const NEIGHBOUR_DISCOVERY: [&str; 3] = [
    "router-solicitation",
    "neighbour-solicitation",
    "neighbour-advertisement",
];

/// Which `OUTPUT` jumps a restore adds (those not installed yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jumps {
    pub nat: bool,
    pub filter: bool,
}

impl Jumps {
    /// Both jumps: a first run.
    pub const BOTH: Jumps = Jumps {
        nat: true,
        filter: true,
    };
}

impl CaptureSpec {
    /// The included networks of `family`; a family none of `include_cidrs` names is
    /// captured whole, so an IPv4-only list never leaves IPv6 egress uncaptured.
    pub fn includes(&self, family: Family) -> Vec<super::Cidr> {
        let named: Vec<_> = self
            .include_cidrs
            .iter()
            .copied()
            .filter(|c| c.family() == family)
            .collect();
        if named.is_empty() {
            vec![family.any()]
        } else {
            dedup(&named)
        }
    }

    fn excludes(&self, family: Family) -> Vec<super::Cidr> {
        let of: Vec<_> = self
            .exclude_cidrs
            .iter()
            .copied()
            .filter(|c| c.family() == family)
            .collect();
        dedup(&of)
    }

    /// `-m owner` exemptions: toolgate's own connections (and the optional gid's).
    fn owners(&self) -> Vec<String> {
        let mut out = vec![format!("-m owner --uid-owner {} -j RETURN", self.proxy_uid)];
        if let Some(gid) = self.proxy_gid {
            out.push(format!("-m owner --gid-owner {gid} -j RETURN"));
        }
        out
    }

    /// The rules of [`CHAIN`] (`nat`) for `family`, in order, as `iptables-restore` lines.
    ///
    /// Exemptions come first (`RETURN`), then one `REDIRECT` per included network and port.
    pub fn nat_rules(&self, family: Family) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |rule: String| out.push(format!("-A {CHAIN} {rule}"));
        // Loopback covers the agent talking to toolgate itself and to the pod's own IP.
        add("-o lo -j RETURN".to_string());
        add(format!("-d {} -j RETURN", family.loopback()));
        for rule in self.owners() {
            add(rule);
        }
        let mut exempt_ports = vec![self.admin_port];
        exempt_ports.extend(&self.exclude_ports);
        for port in dedup(&exempt_ports) {
            add(format!("-p tcp --dport {port} -j RETURN"));
        }
        for cidr in self.excludes(family) {
            add(format!("-d {cidr} -j RETURN"));
        }
        for cidr in self.includes(family) {
            let dest = destination(cidr);
            for port in dedup(&self.ports) {
                add(format!(
                    "-p tcp {dest}--dport {port} -j REDIRECT --to-ports {}",
                    self.transparent_port
                ));
            }
        }
        out
    }

    /// The rules of [`EGRESS_CHAIN`] (`filter`) for `family`, in order.
    pub fn filter_rules(&self, family: Family) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |rule: String| out.push(format!("-A {EGRESS_CHAIN} {rule}"));
        // Loopback, which includes every redirected connection: REDIRECT rewrote its
        // destination to loopback (the hook still reports the original output device).
        add("-o lo -j RETURN".to_string());
        add(format!("-d {} -j RETURN", family.loopback()));
        for rule in self.owners() {
            add(rule);
        }
        for cidr in self.excludes(family) {
            add(format!("-d {cidr} -j RETURN"));
        }
        // QUIC/HTTP3 would carry the captured ports' traffic past the TCP redirect.
        let udp_ports: Vec<u16> = dedup(&self.ports)
            .into_iter()
            .filter(|p| !self.exclude_ports.contains(p))
            .collect();
        for cidr in self.includes(family) {
            let dest = destination(cidr);
            for port in &udp_ports {
                add(format!("-p udp {dest}--dport {port} -j REJECT"));
            }
        }
        if self.egress == Egress::DenyOther {
            // Answers on connections others opened to the pod (kubelet probes, a served port);
            // inbound traffic itself is a NetworkPolicy's business.
            add("-m conntrack --ctstate ESTABLISHED,RELATED --ctdir REPLY -j RETURN".to_string());
            if family == Family::V6 {
                for kind in NEIGHBOUR_DISCOVERY {
                    add(format!("-p ipv6-icmp --icmpv6-type {kind} -j RETURN"));
                }
            }
            let servers: Vec<_> = dedup(&self.dns_servers)
                .into_iter()
                .filter(|ip| Family::of(*ip) == family)
                .collect();
            for server in servers {
                for proto in ["udp", "tcp"] {
                    add(format!("-p {proto} -d {server} --dport 53 -j RETURN"));
                }
            }
            for port in dedup(&self.exclude_ports) {
                add(format!("-p tcp --dport {port} -j RETURN"));
            }
            add("-j DROP".to_string());
        }
        out
    }

    /// The complete `iptables-restore --noflush` (or `ip6tables-restore`) input for
    /// `family`: both chains declared (so a rerun flushes and refills them) and the `OUTPUT`
    /// jumps `jumps` asks for (left out when already installed).
    pub fn restore_input(&self, family: Family, jumps: Jumps) -> String {
        let mut text = format!("*nat\n:{CHAIN} - [0:0]\n");
        for rule in self.nat_rules(family) {
            text.push_str(&rule);
            text.push('\n');
        }
        if jumps.nat {
            text.push_str(&format!("-A OUTPUT {}\n", NAT_JUMP.join(" ")));
        }
        text.push_str("COMMIT\n");
        text.push_str(&format!("*filter\n:{EGRESS_CHAIN} - [0:0]\n"));
        for rule in self.filter_rules(family) {
            text.push_str(&rule);
            text.push('\n');
        }
        if jumps.filter {
            text.push_str(&format!("-A OUTPUT {}\n", FILTER_JUMP.join(" ")));
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// `-d NETWORK ` for a rule, or nothing for every address.
fn destination(cidr: super::Cidr) -> String {
    if cidr.is_any() {
        String::new()
    } else {
        format!("-d {cidr} ")
    }
}
