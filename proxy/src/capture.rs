//! Egress capture for transparent mode: the iptables `nat` rules that `toolgate init-iptables`
//! installs in the pod's network namespace, so the agent's outbound TCP to the tool ports
//! lands on toolgate's transparent listener whatever the agent's HTTP client does.
//!
//! The rules live in one dedicated chain, [`CHAIN`], jumped to from `nat OUTPUT`. Applying
//! declares the chain in an `iptables-restore --noflush` batch, which flushes and refills it
//! atomically, and adds the jump only when it is missing: running the step twice (an init
//! container restarted by the kubelet) leaves exactly one set of rules.
//!
//! Loop prevention: toolgate's own connections leave as its uid (1337 in the chart), which
//! the chain returns early, like every connection on loopback.

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::str::FromStr;

/// The chain holding toolgate's capture rules in the `nat` table.
pub const CHAIN: &str = "TOOLGATE_OUTPUT";

/// The match of the `nat OUTPUT` rule that sends TCP into [`CHAIN`].
const JUMP: [&str; 4] = ["-p", "tcp", "-j", CHAIN];

/// An IPv4 network in CIDR notation, e.g. `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 CIDR like 10.0.0.0/8 (IPv6 egress is not captured)")]
    Syntax(String),
    #[error("{given:?} has host bits set: did you mean {suggest}?")]
    HostBits { given: String, suggest: Cidr },
}

impl Cidr {
    /// Every IPv4 address.
    pub const ANY: Cidr = Cidr {
        network: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
    };

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `a.b.c.d/n`; a bare address means `/32`. Host bits must be zero.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                (a, p.parse::<u8>().map_err(|_| syntax())?)
            }
            Some(_) => return Err(syntax()),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if prefix > 32 {
            return Err(syntax());
        }
        let network = Ipv4Addr::from(u32::from(addr) & Cidr::mask(prefix));
        let cidr = Cidr { network, prefix };
        if network != addr {
            return Err(CidrError::HostBits {
                given: s.to_string(),
                suggest: cidr,
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// What to capture: the inputs of `toolgate init-iptables`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    /// Port of toolgate's transparent listener (`listen.transparent`) on 127.0.0.1.
    pub transparent_port: u16,
    /// Port of toolgate's admin listener, never redirected.
    pub admin_port: u16,
    /// The uid toolgate runs as: its own upstream connections are never redirected.
    pub proxy_uid: u32,
    /// Optionally also exempt this gid (for other trusted processes in the pod).
    pub proxy_gid: Option<u32>,
    /// Destination TCP ports redirected (default 80 and 443).
    pub ports: Vec<u16>,
    /// Destinations redirected (default every address).
    pub include_cidrs: Vec<Cidr>,
    /// Destinations never redirected (e.g. the cluster's service range).
    pub exclude_cidrs: Vec<Cidr>,
    /// Destination ports never redirected, even inside `include_cidrs`.
    pub exclude_ports: Vec<u16>,
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
    /// The defaults the Helm chart also uses: redirect TCP 80 and 443 to 15006, exempt uid 1337.
    pub fn new() -> CaptureSpec {
        CaptureSpec {
            transparent_port: 15006,
            admin_port: 15000,
            proxy_uid: 1337,
            proxy_gid: None,
            ports: vec![80, 443],
            include_cidrs: vec![Cidr::ANY],
            exclude_cidrs: Vec::new(),
            exclude_ports: Vec::new(),
        }
    }

    /// Reject specifications that would capture nothing, loop, or redirect the admin port.
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
        Ok(())
    }

    /// The rules of [`CHAIN`], in order, as `iptables-restore` lines (`-A TOOLGATE_OUTPUT …`).
    ///
    /// Exemptions come first (`RETURN`), then one `REDIRECT` per included network and port.
    pub fn rules(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |rule: String| out.push(format!("-A {CHAIN} {rule}"));
        // Loopback covers the agent talking to toolgate itself and to the pod's own IP.
        add("-o lo -j RETURN".to_string());
        add("-d 127.0.0.0/8 -j RETURN".to_string());
        add(format!("-m owner --uid-owner {} -j RETURN", self.proxy_uid));
        if let Some(gid) = self.proxy_gid {
            add(format!("-m owner --gid-owner {gid} -j RETURN"));
        }
        let mut exempt_ports = vec![self.admin_port];
        exempt_ports.extend(&self.exclude_ports);
        for port in dedup(&exempt_ports) {
            add(format!("-p tcp --dport {port} -j RETURN"));
        }
        for cidr in dedup(&self.exclude_cidrs) {
            add(format!("-d {cidr} -j RETURN"));
        }
        for cidr in dedup(&self.include_cidrs) {
            let dest = if cidr == Cidr::ANY {
                String::new()
            } else {
                format!("-d {cidr} ")
            };
            for port in dedup(&self.ports) {
                add(format!(
                    "-p tcp {dest}--dport {port} -j REDIRECT --to-ports {}",
                    self.transparent_port
                ));
            }
        }
        out
    }

    /// The complete `iptables-restore --noflush` input; `with_jump` adds the `nat OUTPUT`
    /// rule that sends TCP into [`CHAIN`] (left out when it is already installed).
    pub fn restore_input(&self, with_jump: bool) -> String {
        let mut text = format!("*nat\n:{CHAIN} - [0:0]\n");
        for rule in self.rules() {
            text.push_str(&rule);
            text.push('\n');
        }
        if with_jump {
            text.push_str(&format!("-A OUTPUT {}\n", JUMP.join(" ")));
        }
        text.push_str("COMMIT\n");
        text
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

/// The iptables programs to run (`iptables-legacy`/`iptables-legacy-restore` on nodes that
/// still use the legacy backend).
#[derive(Debug, Clone)]
pub struct Iptables {
    pub iptables: String,
    pub restore: String,
}

impl Default for Iptables {
    fn default() -> Iptables {
        Iptables {
            iptables: "iptables".to_string(),
            restore: "iptables-restore".to_string(),
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Rules now in [`CHAIN`].
    pub rules: usize,
    /// Whether the `nat OUTPUT` jump was added (false: it was already there).
    pub jump_added: bool,
}

/// Install `spec` in the current network namespace: flush and refill [`CHAIN`] in one
/// `iptables-restore` transaction and add the jump from `nat OUTPUT` if it is missing.
pub fn apply(spec: &CaptureSpec, programs: &Iptables) -> Result<Applied, CaptureError> {
    spec.validate()?;
    let check = Command::new(&programs.iptables)
        .args(["-t", "nat", "-C", "OUTPUT"])
        .args(JUMP)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| CaptureError::Spawn {
            program: programs.iptables.clone(),
            source,
        })?;
    // -C fails both when the rule is absent and when the chain does not exist yet.
    let jump_added = !check.success();
    let input = spec.restore_input(jump_added);
    let spawn = |source| CaptureError::Spawn {
        program: programs.restore.clone(),
        source,
    };
    let mut child = Command::new(&programs.restore)
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
            program: programs.restore.clone(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(Applied {
        rules: spec.rules().len(),
        jump_added,
    })
}
