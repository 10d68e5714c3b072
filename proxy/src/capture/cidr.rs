//! Address families and CIDRs for the capture rules: every rule is written once per family,
//! for `iptables` (IPv4) and `ip6tables` (IPv6).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP family: the capture is installed once per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `IPv4` or `IPv6`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Every address of the family.
    pub fn any(self) -> Cidr {
        match self {
            Family::V4 => Cidr::ANY_V4,
            Family::V6 => Cidr::ANY_V6,
        }
    }

    /// The loopback network (never captured).
    pub(super) fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// An IPv4 or IPv6 network in CIDR notation, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a CIDR could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR like 10.0.0.0/8 or fd00::/8")]
    Syntax(String),
    #[error("{given:?} has host bits set: did you mean {suggest}?")]
    HostBits { given: String, suggest: Cidr },
}

impl Cidr {
    /// Every IPv4 address.
    pub const ANY_V4: Cidr = Cidr {
        network: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        prefix: 0,
    };
    /// Every IPv6 address.
    pub const ANY_V6: Cidr = Cidr {
        network: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        prefix: 0,
    };

    /// The network's family.
    pub fn family(&self) -> Family {
        Family::of(self.network)
    }

    /// Whether this is every address of its family.
    pub fn is_any(&self) -> bool {
        self.prefix == 0
    }

    fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `address/n`; a bare address means the single host. Host bits must be zero.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                (a, Some(p.parse::<u8>().map_err(|_| syntax())?))
            }
            Some(_) => return Err(syntax()),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(syntax());
        }
        let cidr = Cidr {
            network: Cidr::masked(addr, prefix),
            prefix,
        };
        if cidr.network != addr {
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
