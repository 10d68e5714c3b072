//! Accept: read where a request is going — a named route, an absolute-form target (as
//! clients honouring HTTP_PROXY send), or an origin-form target with a `Host` header.
//!
//! The destination's tool is looked up by host, port and scheme: a host pattern without a
//! port matches only the scheme's default port (80 for `http://`, 443 for `https://`), so
//! `http://jira.example.com:8080/` is no tool at all (action `unknown`).

#[cfg(test)]
mod tests;

use http::HeaderMap;

use crate::classify::split_host_port;
use crate::config::Config;
use crate::normalise::{self, Normalised, Rejection};

/// How the request named its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A `routes` prefix on the proxy listener (`/jira/…`).
    Route,
    /// `GET http://host/path` (forward proxy).
    AbsoluteForm,
    /// `GET /path` with `Host: host`.
    Host,
    /// Inside a CONNECT tunnel whose TLS toolgate terminated: the CONNECT target is the
    /// authority.
    Tunnel,
    /// Redirected to the transparent listener by iptables: the original destination (and,
    /// for TLS, the SNI) is the authority.
    Transparent,
}

impl Via {
    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Route => "route",
            Via::AbsoluteForm => "forward",
            Via::Host => "host",
            Via::Tunnel => "connect",
            Via::Transparent => "transparent",
        }
    }
}

/// A request whose destination and request line have been read and canonicalised.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub via: Via,
    /// The catalog tool the destination belongs to, if any.
    pub tool: Option<usize>,
    /// Whether the agent asked for https.
    pub tls: bool,
    /// The host the agent asked for (canonical), or the routed tool's host.
    pub host: String,
    pub port: u16,
    /// The canonical request line (route prefix removed).
    pub request: Normalised,
}

/// A destination fixed by the connection rather than by the request: the CONNECT target of
/// an intercepted tunnel, or the original destination of a transparently captured connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub via: Via,
    /// Canonical host name or IP literal (no brackets).
    pub host: String,
    pub port: u16,
    /// Whether the agent's connection is TLS (terminated by toolgate).
    pub tls: bool,
}

/// Read a request that arrived on a connection whose destination is already known. The
/// connection decides the authority, never the request: a `Host` header or an absolute-form
/// authority that names anything else is refused, and named routes do not apply.
pub fn accept_at(
    config: &Config,
    destination: &Destination,
    method: &str,
    raw: &[u8],
    headers: &HeaderMap,
) -> Result<Accepted, Rejection> {
    let default_port = if destination.tls { 443 } else { 80 };
    let agrees = |authority: &str| -> Result<(), Rejection> {
        let (host, port) = normalise::authority(authority)?;
        if host != destination.host || port.unwrap_or(default_port) != destination.port {
            return Err(Rejection::HostMismatch(
                authority.chars().take(64).collect(),
            ));
        }
        Ok(())
    };
    let target = match strip_scheme(raw) {
        Some((tls, rest)) => {
            let end = rest
                .iter()
                .position(|b| *b == b'/' || *b == b'?')
                .unwrap_or(rest.len());
            let (authority, target) = rest.split_at(end);
            let authority = std::str::from_utf8(authority).map_err(|_| {
                Rejection::BadHost(normalise::clip(&String::from_utf8_lossy(authority)))
            })?;
            if tls != destination.tls {
                return Err(Rejection::HostMismatch(
                    authority.chars().take(64).collect(),
                ));
            }
            agrees(authority)?;
            match target.first() {
                Some(b'/') => target.to_vec(),
                _ => [b"/", target].concat(),
            }
        }
        None if raw.starts_with(b"/") => raw.to_vec(),
        None => return Err(Rejection::BadTarget),
    };
    if let Some(h) = host_header(headers)? {
        agrees(h)?;
    }
    let request = normalise::request(method, &target)?;
    Ok(Accepted {
        via: destination.via,
        tool: config
            .catalog
            .tool_for_host(&destination.host, destination.port, destination.tls),
        tls: destination.tls,
        host: destination.host.clone(),
        port: destination.port,
        request,
    })
}

/// Read the destination of a request (`method`, raw request `target`, `headers`) against
/// the config's routes and catalog.
pub fn accept(
    config: &Config,
    method: &str,
    raw: &[u8],
    headers: &HeaderMap,
) -> Result<Accepted, Rejection> {
    if let Some((tls, rest)) = strip_scheme(raw) {
        return absolute_form(headers, method, tls, rest, config);
    }
    if !raw.starts_with(b"/") {
        return Err(Rejection::BadTarget);
    }
    let request = normalise::request(method, raw)?;
    for route in &config.routes {
        if request.path.starts_with(&route.prefix) {
            let Some(tool) = config.catalog.tool(route.tool) else {
                continue;
            };
            let depth = route.prefix.matches('/').count().saturating_sub(1);
            let (tls, host, port) = match &tool.upstream {
                Some(u) => (u.tls, u.host.clone(), u.port),
                None => {
                    let host = tool
                        .hosts
                        .iter()
                        .find(|h| !h.starts_with('*'))
                        .cloned()
                        .unwrap_or_default();
                    let (name, port) = split_host_port(&host);
                    (true, name.to_string(), port.unwrap_or(443))
                }
            };
            return Ok(Accepted {
                via: Via::Route,
                tool: Some(route.tool),
                tls,
                host,
                port,
                request: request.strip_segments(depth),
            });
        }
    }
    let host_header = host_header(headers)?.ok_or(Rejection::NoHost)?;
    let (host, port) = normalise::authority(host_header)?;
    let port = port.unwrap_or(80);
    let tool = config.catalog.tool_for_host(&host, port, false);
    Ok(Accepted {
        via: Via::Host,
        tool,
        tls: false,
        host,
        port,
        request,
    })
}

fn absolute_form(
    headers: &HeaderMap,
    method: &str,
    tls: bool,
    rest: &[u8],
    config: &Config,
) -> Result<Accepted, Rejection> {
    let end = rest
        .iter()
        .position(|b| *b == b'/' || *b == b'?')
        .unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    let authority = std::str::from_utf8(authority)
        .map_err(|_| Rejection::BadHost(normalise::clip(&String::from_utf8_lossy(authority))))?;
    let (host, port) = normalise::authority(authority)?;
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    if let Some(h) = host_header(headers)? {
        // pingora refuses a disagreeing Host too; this keeps the rule independent of it.
        let (hh, hp) = normalise::authority(h)?;
        if hh != host || hp.unwrap_or(if tls { 443 } else { 80 }) != port {
            return Err(Rejection::HostMismatch(h.chars().take(64).collect()));
        }
    }
    let request = match target.first() {
        Some(b'/') => normalise::request(method, target)?,
        // `http://host` and `http://host?q` name the root path.
        _ => normalise::request(method, &[b"/", target].concat())?,
    };
    let tool = config.catalog.tool_for_host(&host, port, tls);
    Ok(Accepted {
        via: Via::AbsoluteForm,
        tool,
        tls,
        host,
        port,
        request,
    })
}

fn strip_scheme(raw: &[u8]) -> Option<(bool, &[u8])> {
    let lower = |n: usize| raw.get(..n).map(|p| p.to_ascii_lowercase());
    if lower(7).as_deref() == Some(b"http://") {
        return raw.get(7..).map(|r| (false, r));
    }
    if lower(8).as_deref() == Some(b"https://") {
        return raw.get(8..).map(|r| (true, r));
    }
    None
}

/// The request's single `Host` header, if any.
pub fn host_header(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    let mut values = headers.get_all(http::header::HOST).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::DuplicateHeader("Host"));
    }
    first.to_str().map(Some).map_err(|_| {
        Rejection::BadHost(normalise::clip(&String::from_utf8_lossy(first.as_bytes())))
    })
}
