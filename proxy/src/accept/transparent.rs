//! The transparent listener: connections iptables redirected (`toolgate init-iptables`). The
//! original destination comes from SO_ORIGINAL_DST. Plain HTTP is classified by `Host`, which
//! must name the address the agent connected to; TLS by its SNI (or, without SNI, the
//! original address), with the same interception as CONNECT. Plain HTTP for a port captured
//! as TLS (443) is refused with a 400 problem before anything is decided.
//!
//! Loops: toolgate's own upstream connections would be redirected back to it, so the rules
//! exempt toolgate's uid (`--proxy-uid`, 1337); a connection made straight to this listener
//! (not redirected) is refused rather than forwarded to itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use pingora::http::RequestHeader;
use pingora::protocols::l4::ext::get_original_dest;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::GetSocketDigest;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use toolgate_policy::accept::{host_header, Destination, Via};
use toolgate_policy::normalise;

use super::{intercept, serve_http, splice, Front, Inbound, HANDSHAKE_TIMEOUT};
use crate::problem::Refusal;

/// Original destination ports the capture treats as TLS: plain HTTP arriving for one is
/// refused, never forwarded (it would carry a credential in cleartext where the agent's
/// client, or its operator, expected TLS).
const TLS_PORTS: &[u16] = &[443];
/// Largest ClientHello read to find the SNI.
const MAX_CLIENT_HELLO: usize = 16 * 1024;
/// How long a name → address check is reused.
const MATCH_TTL: Duration = Duration::from_secs(30);
/// Most name → address checks remembered.
const MATCH_ENTRIES: usize = 1024;

type MatchCache = Mutex<HashMap<(String, IpAddr), (bool, Instant)>>;
static MATCHES: LazyLock<MatchCache> = LazyLock::new(MatchCache::default);

/// Serve one redirected connection.
pub(super) async fn serve(front: &Front, mut stream: L4Stream, shutdown: &ShutdownWatch) {
    let gw = &front.gateway;
    let original = match original_destination(&stream) {
        Ok(o) => o,
        Err(reason) => {
            tracing::warn!(target: "toolgate::access", via = "transparent", "closed: {reason}");
            return;
        }
    };
    let mut first = [0u8; 1];
    let idle = gw.snapshot().config.limits.idle_timeout;
    match tokio::time::timeout(idle, stream.read_exact(&mut first)).await {
        Ok(Ok(_)) => stream.rewind(&first),
        _ => return,
    }
    if first[0] != 0x16 {
        serve_http(
            front,
            Box::new(stream),
            Some(Inbound::Redirected { original }),
            Some(std::time::Instant::now()),
            shutdown,
        )
        .await;
        return;
    }
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, client_hello(&mut stream)).await;
    let sni = match hello {
        Ok(Ok((seen, sni))) => {
            stream.rewind(&seen);
            sni
        }
        Ok(Err(reason)) => {
            tracing::info!(target: "toolgate::access", via = "transparent", original = %original, "closed: {reason}");
            return;
        }
        Err(_) => return,
    };
    let host = match sni {
        Some(name) => name.trim_end_matches('.').to_ascii_lowercase(),
        None => original.ip().to_string(),
    };
    let snapshot = gw.snapshot();
    let limits = snapshot.config.limits.clone();
    if let Err(refusal) = agrees(&host, original, limits.connect_timeout).await {
        tracing::warn!(target: "toolgate::access", via = "transparent", original = %original, "closed: {refusal}");
        return;
    }
    let Some(tool_id) = snapshot
        .config
        .catalog
        .tool_for_host(&host, original.port(), true)
    else {
        tracing::warn!(target: "toolgate::access", via = "transparent", original = %original, sni = %host, "closed: no tool in the catalog serves {host}; toolgate intercepts TLS only for catalogued hosts");
        gw.metrics
            .request(&Arc::from(toolgate_policy::classify::UNKNOWN), "reject");
        return;
    };
    let destination = Destination {
        via: Via::Transparent,
        host: host.clone(),
        port: original.port(),
        tls: true,
    };
    let intercept = snapshot
        .config
        .catalog
        .tool(tool_id)
        .is_some_and(|t| t.intercept);
    if !intercept {
        let answer = splice::Answer::Silent;
        let headers = HeaderMap::new();
        splice::serve(
            gw,
            snapshot,
            tool_id,
            destination,
            Some(original),
            &headers,
            stream,
            answer,
        )
        .await;
        return;
    }
    let leaf = match snapshot.authority.as_ref().map(|ca| ca.leaf(&host)) {
        Some(Ok(leaf)) => leaf,
        Some(Err(e)) => {
            tracing::warn!(target: "toolgate::access", via = "transparent", original = %original, "closed: {e}");
            return;
        }
        None => {
            tracing::warn!(target: "toolgate::access", via = "transparent", original = %original, sni = %host, "closed: intercepting TLS needs tls.ca (`toolgate ca init` creates one)");
            return;
        }
    };
    drop(snapshot);
    intercept::serve(front, stream, destination, leaf, shutdown).await;
}

/// Where the agent connected before iptables redirected it here.
fn original_destination(stream: &L4Stream) -> Result<SocketAddr, String> {
    let unknown = || {
        "the connection was not redirected by iptables (SO_ORIGINAL_DST knows no original destination); the transparent listener serves only redirected traffic".to_string()
    };
    let original = get_original_dest(stream.as_raw_fd())
        .map_err(|_| unknown())?
        .ok_or_else(unknown)?;
    let local = stream
        .get_socket_digest()
        .and_then(|d| d.local_addr().and_then(|a| a.as_inet().copied()));
    if Some(original) == local {
        return Err(format!(
            "connection to {original} was not redirected by iptables; the transparent listener serves only redirected traffic"
        ));
    }
    Ok(original)
}

/// Read the ClientHello (bounded) and return the bytes read and the SNI, if any.
async fn client_hello(stream: &mut L4Stream) -> Result<(Vec<u8>, Option<String>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the TLS ClientHello".to_string());
        }
        let mut fresh = chunk.get(..n).unwrap_or_default();
        seen.extend_from_slice(fresh);
        if seen.len() > MAX_CLIENT_HELLO {
            return Err(format!("TLS ClientHello over {MAX_CLIENT_HELLO} bytes"));
        }
        while !fresh.is_empty() {
            match acceptor.read_tls(&mut fresh) {
                Ok(0) | Err(_) => return Err("malformed TLS ClientHello".to_string()),
                Ok(_) => {}
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_string);
                return Ok((seen, sni));
            }
            Ok(None) => continue,
            Err((e, _)) => return Err(format!("malformed TLS ClientHello: {e}")),
        }
    }
}

/// The destination of a plain-HTTP request on a redirected connection: its `Host` (or, when
/// absent, the original address), which must name the address the agent connected to.
pub(super) async fn plain_destination(
    original: SocketAddr,
    req: &RequestHeader,
    resolve_timeout: Duration,
) -> Result<Destination, Refusal> {
    if TLS_PORTS.contains(&original.port()) {
        return Err(Refusal::Misdirected(format!(
            "plain HTTP to {original}: port {} is captured as TLS, and toolgate never forwards cleartext meant for it; use https://",
            original.port()
        )));
    }
    let host = match host_header(&req.headers).map_err(Refusal::Rejected)? {
        Some(h) => {
            let (host, port) = normalise::authority(h).map_err(Refusal::Rejected)?;
            if port.is_some_and(|p| p != original.port()) {
                return Err(Refusal::Misdirected(format!(
                    "Host {:?} names another port than the connection's destination {original}",
                    h.chars().take(64).collect::<String>()
                )));
            }
            host
        }
        None => original.ip().to_string(),
    };
    agrees(&host, original, resolve_timeout).await?;
    Ok(Destination {
        via: Via::Transparent,
        host,
        port: original.port(),
        tls: false,
    })
}

/// `host` (an IP literal or a name) must be the address the agent connected to: an agent must
/// not reach one address while toolgate decides (and injects a credential) for another.
async fn agrees(host: &str, original: SocketAddr, timeout: Duration) -> Result<(), Refusal> {
    let mismatch = || {
        Refusal::Misdirected(format!(
            "{} does not name {}, the address the connection was made to",
            host.chars().take(64).collect::<String>(),
            original.ip()
        ))
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return if ip == original.ip() {
            Ok(())
        } else {
            Err(mismatch())
        };
    }
    let key = (host.to_string(), original.ip());
    if let Ok(cache) = MATCHES.lock() {
        if let Some((ok, at)) = cache.get(&key) {
            if at.elapsed() < MATCH_TTL {
                return if *ok { Ok(()) } else { Err(mismatch()) };
            }
        }
    }
    let ok = match tokio::time::timeout(timeout, tokio::net::lookup_host((host, original.port())))
        .await
    {
        Ok(Ok(mut addrs)) => addrs.any(|a| a.ip() == original.ip()),
        Ok(Err(e)) => {
            return Err(Refusal::Misdirected(format!(
                "cannot resolve {} to check it against {}: {e}",
                host.chars().take(64).collect::<String>(),
                original.ip()
            )))
        }
        Err(_) => return Err(Refusal::UpstreamTimeout),
    };
    if let Ok(mut cache) = MATCHES.lock() {
        if cache.len() >= MATCH_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (ok, Instant::now()));
    }
    if ok {
        Ok(())
    } else {
        Err(mismatch())
    }
}
