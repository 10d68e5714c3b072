//! Forward: where an allowed request goes, and the request line the tool receives —
//! origin-form, the canonical path, TLS originated where the tool is https.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use toolgate_policy::classify::Tool;
use toolgate_policy::config::Limits;

use toolgate_policy::accept::Accepted;

/// How long an idle upstream connection stays in the pool.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);
/// How long a resolved upstream address is reused (the system resolver gives no TTLs).
const DNS_TTL: Duration = Duration::from_secs(30);
/// Most distinct upstream names remembered.
const DNS_CACHE_ENTRIES: usize = 1024;

type DnsCache = Mutex<HashMap<(String, u16), (SocketAddr, Instant)>>;

/// Resolved upstream addresses: a lookup per request costs more than the rest of the pipeline.
static DNS: LazyLock<DnsCache> = LazyLock::new(DnsCache::default);

/// Where and how one request is sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub tls: bool,
    /// Host to resolve and to verify the certificate for (SNI).
    pub host: String,
    pub port: u16,
    /// Origin-form target (`/path?query`), exactly as decided on.
    pub target: String,
    /// `Host` header value for the tool.
    pub authority: String,
}

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot resolve upstream host {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot build the upstream request: {0}")]
    Request(String),
}

/// The plan for `accepted`: the tool's configured upstream; for a catalogued tool without
/// one, https to the requested host (port 443 when the agent used its scheme's default port,
/// else the port a `host:port` pattern named) — an agent's `http://` is upgraded, never the
/// reverse; for a destination no tool serves, the scheme and port the agent asked for.
///
/// So plain HTTP leaves toolgate only towards an `upstream: http://…` an operator wrote, or
/// towards an uncatalogued destination, which never gets a credential
/// (`toolgate_policy::credential::select`).
pub fn plan(accepted: &Accepted, tool: Option<&Tool>) -> Plan {
    let (tls, host, port, base) = match (tool, tool.and_then(|t| t.upstream.as_ref())) {
        (_, Some(u)) => (u.tls, u.host.clone(), u.port, u.base_path.as_str()),
        (Some(_), None) => {
            let asked_default = accepted.port == if accepted.tls { 443 } else { 80 };
            let port = if asked_default { 443 } else { accepted.port };
            (true, accepted.host.clone(), port, "")
        }
        (None, None) => (accepted.tls, accepted.host.clone(), accepted.port, ""),
    };
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let default_port = if tls { 443 } else { 80 };
    let authority = if port == default_port {
        bracketed
    } else {
        format!("{bracketed}:{port}")
    };
    Plan {
        tls,
        host,
        port,
        target: format!("{base}{}", accepted.request.target()),
        authority,
    }
}

/// Resolve the plan's host (asynchronously) and build the pingora peer.
pub async fn peer(
    plan: &Plan,
    limits: &Limits,
    roots: Option<&Arc<CaType>>,
) -> Result<Box<HttpPeer>, ForwardError> {
    let addr = match plan.host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, plan.port),
        Err(_) => resolve(&plan.host, plan.port).await?,
    };
    // The SNI is the host (an IP literal makes rustls verify the certificate's IP SAN).
    let mut peer = HttpPeer::new(addr, plan.tls, plan.host.clone());
    peer.options.connection_timeout = Some(limits.connect_timeout);
    peer.options.total_connection_timeout = Some(limits.connect_timeout);
    peer.options.read_timeout = Some(limits.upstream_timeout);
    peer.options.write_timeout = Some(limits.upstream_timeout);
    peer.options.idle_timeout = Some(UPSTREAM_IDLE);
    peer.group_key = worker_slot();
    if let Some(roots) = roots {
        peer.options.ca = Some(roots.clone());
    }
    Ok(Box::new(peer))
}

/// This thread's slot in the upstream connection pool. Each pingora worker thread runs its own
/// runtime, and a socket's readiness is reported to the runtime that opened it: a pooled
/// connection taken by another worker made every read and write on it a cross-thread wake-up
/// (an eventfd write and an epoll return on each side). Pooled per thread, a connection is
/// only ever used by the thread that opened it.
pub fn worker_slot() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static SLOT: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    SLOT.with(|s| *s)
}

/// Resolve `host:port` asynchronously, through a small cache of recent answers.
pub(crate) async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ForwardError> {
    let key = (host.to_string(), port);
    if let Ok(cache) = DNS.lock() {
        if let Some((addr, at)) = cache.get(&key) {
            if at.elapsed() < DNS_TTL {
                return Ok(*addr);
            }
        }
    }
    let resolve_error = |reason: String| ForwardError::Resolve {
        host: host.to_string(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| resolve_error(e.to_string()))?;
    let addr = addrs
        .next()
        .ok_or_else(|| resolve_error("no addresses".to_string()))?;
    if let Ok(mut cache) = DNS.lock() {
        if cache.len() >= DNS_CACHE_ENTRIES {
            cache.retain(|_, (_, at)| at.elapsed() < DNS_TTL);
            if cache.len() >= DNS_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (addr, Instant::now()));
    }
    Ok(addr)
}

/// Rewrite the request line to origin-form and the `Host` header to the upstream's.
pub fn rewrite(req: &mut RequestHeader, plan: &Plan) -> Result<(), ForwardError> {
    req.set_raw_path(plan.target.as_bytes())
        .map_err(|e| ForwardError::Request(e.to_string()))?;
    req.insert_header(http::header::HOST, plan.authority.as_str())
        .map_err(|e| ForwardError::Request(e.to_string()))?;
    Ok(())
}
