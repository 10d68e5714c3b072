//! Egress capture for transparent mode: the iptables rules that `toolgate init-iptables`
//! installs in the pod's network namespace, for IPv4 (`iptables`) and IPv6 (`ip6tables`), so
//! the agent's outbound TCP to the tool ports lands on toolgate's transparent listener
//! whatever the agent's HTTP client does, UDP to those ports (QUIC) is refused so clients fall
//! back to TCP, and — with `--egress deny-other` — nothing else leaves the pod except DNS to
//! the configured resolvers and what the operator exempted.
//!
//! The rules live in two dedicated chains, [`CHAIN`] (`nat`) and [`EGRESS_CHAIN`]
//! (`filter`), jumped to from `OUTPUT`. Applying declares the chains in an
//! `iptables-restore --noflush` batch, which flushes and refills them atomically, and adds
//! the jumps only when they are missing: running the step twice (an init container restarted
//! by the kubelet) leaves exactly one set of rules.
//!
//! Loop prevention: toolgate's own connections leave as its uid (1337 in the chart), which
//! both chains return early, like every connection on loopback. IPv6 connections are
//! redirected to `[::1]`, where toolgate listens beside `127.0.0.1` (see `server.rs`).

mod cidr;
mod rules;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;

pub use cidr::{Cidr, CidrError, Family};
pub use rules::Jumps;

/// The chain holding toolgate's redirect rules in the `nat` table.
pub const CHAIN: &str = "TOOLGATE_OUTPUT";
/// The chain holding toolgate's egress rules (UDP refusal, deny-other) in the `filter` table.
pub const EGRESS_CHAIN: &str = "TOOLGATE_EGRESS";
/// Present when the kernel has IPv6 (in every network namespace).
const IF_INET6: &str = "/proc/net/if_inet6";

/// What happens to the agent's egress that is not redirected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Egress {
    /// Left alone (only UDP to the captured ports is refused).
    #[default]
    AllowOther,
    /// Dropped: only redirected traffic, loopback, toolgate's uid, DNS to `dns_servers` and
    /// the exclusions leave the pod.
    DenyOther,
}

impl FromStr for Egress {
    type Err = String;

    fn from_str(s: &str) -> Result<Egress, String> {
        match s {
            "allow-other" => Ok(Egress::AllowOther),
            "deny-other" => Ok(Egress::DenyOther),
            other => Err(format!("{other:?}: expected allow-other or deny-other")),
        }
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Egress::AllowOther => "allow-other",
            Egress::DenyOther => "deny-other",
        })
    }
}

/// What to capture: the inputs of `toolgate init-iptables`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    /// Port of toolgate's transparent listener (`listen.transparent`) on loopback.
    pub transparent_port: u16,
    /// Port of toolgate's admin listener, never redirected.
    pub admin_port: u16,
    /// The uid toolgate runs as: its own upstream connections are never redirected.
    pub proxy_uid: u32,
    /// Optionally also exempt this gid (for other trusted processes in the pod).
    pub proxy_gid: Option<u32>,
    /// Destination TCP ports redirected (default 80 and 443); UDP to them is refused.
    pub ports: Vec<u16>,
    /// Destinations redirected, IPv4 and IPv6 (default every address of both families; a
    /// family none of them names is captured whole).
    pub include_cidrs: Vec<Cidr>,
    /// Destinations never redirected nor filtered (e.g. the cluster's service range).
    pub exclude_cidrs: Vec<Cidr>,
    /// Destination TCP ports never redirected, even inside `include_cidrs`.
    pub exclude_ports: Vec<u16>,
    /// What happens to the rest of the agent's egress.
    pub egress: Egress,
    /// With [`Egress::DenyOther`]: the resolvers the agent may reach on UDP/TCP 53.
    pub dns_servers: Vec<IpAddr>,
}

/// A capture specification that cannot work, or a failure applying it.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot run {program}: {source} (the toolgate image ships iptables)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

impl CaptureSpec {
    /// The defaults the Helm chart also uses: redirect TCP 80 and 443 of both families to
    /// 15006, exempt uid 1337, leave other egress alone.
    pub fn new() -> CaptureSpec {
        CaptureSpec {
            transparent_port: 15006,
            admin_port: 15000,
            proxy_uid: 1337,
            proxy_gid: None,
            ports: vec![80, 443],
            include_cidrs: vec![Cidr::ANY_V4, Cidr::ANY_V6],
            exclude_cidrs: Vec::new(),
            exclude_ports: Vec::new(),
            egress: Egress::AllowOther,
            dns_servers: Vec::new(),
        }
    }

    /// Reject specifications that would capture nothing, loop, redirect the admin port, or
    /// (deny-other) leave the agent unable to resolve names.
    pub fn validate(&self) -> Result<(), CaptureError> {
        let invalid = |m: &str| Err(CaptureError::Invalid(m.to_string()));
        if self.transparent_port == 0 || self.admin_port == 0 {
            return invalid("--transparent-port and --admin-port must be non-zero");
        }
        if self.transparent_port == self.admin_port {
            return invalid("--transparent-port and --admin-port must differ");
        }
        if self.ports.is_empty() || self.include_cidrs.is_empty() {
            return invalid("--ports and --include-cidrs must each name at least one entry");
        }
        if self
            .ports
            .iter()
            .chain(&self.exclude_ports)
            .any(|p| *p == 0)
        {
            return invalid("port 0 is not a destination port");
        }
        if self.ports.contains(&self.admin_port) {
            return invalid("--ports must not contain the admin port, which is never redirected");
        }
        if self.proxy_uid == 0 {
            return invalid(
                "--proxy-uid 0 would exempt every root process: run toolgate as its own uid",
            );
        }
        if self.egress == Egress::DenyOther && self.dns_servers.is_empty() {
            return invalid(
                "--egress deny-other needs the DNS servers the agent may query: none were given and /etc/resolv.conf names none; pass --dns-servers (e.g. the cluster resolver's address)",
            );
        }
        Ok(())
    }
}

impl Default for CaptureSpec {
    fn default() -> CaptureSpec {
        CaptureSpec::new()
    }
}

fn dedup<T: Copy + PartialEq>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(item) {
            out.push(*item);
        }
    }
    out
}

/// The `nameserver` addresses in a resolv.conf text, in order.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                // A zone index (fe80::1%eth0) cannot be matched by iptables: skipped.
                (Some("nameserver"), Some(addr)) => addr.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// Whether the kernel has IPv6 (then IPv6 egress must be captured too).
pub fn ipv6_available() -> bool {
    Path::new(IF_INET6).exists()
}

/// The iptables programs to run per family (`iptables-legacy`/`ip6tables-legacy` and their
/// `-restore` on nodes that still use the legacy backend).
#[derive(Debug, Clone)]
pub struct Iptables {
    pub iptables: String,
    pub restore: String,
    pub ip6tables: String,
    pub ip6_restore: String,
}

impl Default for Iptables {
    fn default() -> Iptables {
        Iptables {
            iptables: "iptables".to_string(),
            restore: "iptables-restore".to_string(),
            ip6tables: "ip6tables".to_string(),
            ip6_restore: "ip6tables-restore".to_string(),
        }
    }
}

impl Iptables {
    /// (iptables, iptables-restore) for `family`.
    fn programs(&self, family: Family) -> (&str, &str) {
        match family {
            Family::V4 => (&self.iptables, &self.restore),
            Family::V6 => (&self.ip6tables, &self.ip6_restore),
        }
    }
}

/// What [`apply`] did for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub family: Family,
    /// Rules now in [`CHAIN`].
    pub nat_rules: usize,
    /// Rules now in [`EGRESS_CHAIN`].
    pub filter_rules: usize,
    /// Which `OUTPUT` jumps were added (false: already there).
    pub jumps_added: Jumps,
}

/// Install `spec` for `family` in the current network namespace: flush and refill both
/// chains in one `iptables-restore` transaction and add the jumps from `OUTPUT` that are
/// missing.
pub fn apply(
    spec: &CaptureSpec,
    programs: &Iptables,
    family: Family,
) -> Result<Applied, CaptureError> {
    spec.validate()?;
    let (iptables, restore) = programs.programs(family);
    // -C fails both when the rule is absent and when the chain does not exist yet.
    let missing = |table: &str, jump: &[&str]| -> Result<bool, CaptureError> {
        let status = Command::new(iptables)
            .args(["-t", table, "-C", "OUTPUT"])
            .args(jump)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| CaptureError::Spawn {
                program: iptables.to_string(),
                source,
            })?;
        Ok(!status.success())
    };
    let jumps = Jumps {
        nat: missing("nat", &rules::NAT_JUMP)?,
        filter: missing("filter", &rules::FILTER_JUMP)?,
    };
    let input = spec.restore_input(family, jumps);
    let spawn = |source| CaptureError::Spawn {
        program: restore.to_string(),
        source,
    };
    let mut child = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(CaptureError::Failed {
            program: restore.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(Applied {
        family,
        nat_rules: spec.nat_rules(family).len(),
        filter_rules: spec.filter_rules(family).len(),
        jumps_added: jumps,
    })
}
