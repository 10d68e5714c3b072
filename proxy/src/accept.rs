//! Accept, on the data path: the listeners. The proxy listener serves named routes, forward
//! proxying and CONNECT on one port (a CONNECT is answered, its TLS terminated with a minted
//! certificate and the decrypted requests run through the pipeline); the transparent listener
//! serves connections iptables redirected, by original destination (plain HTTP) or SNI (TLS).
//!
//! A connection whose destination is fixed (a tunnel, a redirect) carries an [`Inbound`] into
//! every request's [`crate::pipeline::Exchange`], as pingora's connection user context.

mod connect;
mod intercept;
mod splice;
#[cfg(test)]
mod tests;
mod transparent;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use toolgate_policy::accept::Destination;

use crate::gateway::Gateway;
use crate::pipeline::Pipeline;
use crate::problem::{self, Ids, Refusal};

/// Longest CONNECT request head read (request line and headers).
pub const MAX_CONNECT_HEAD: usize = 8 * 1024;
/// Time a client has to send its CONNECT head once connected.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to complete the TLS handshake toolgate answers it with.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a new connection may stay silent before its first byte.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle time before a kept-alive downstream connection is closed (pingora's default).
const KEEPALIVE_SECS: u64 = 60;

/// Where the connection a request arrived on was going, when the connection decides it.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// Decrypted requests on a TLS connection toolgate terminated (a CONNECT tunnel, or TLS
    /// captured transparently): the authority is fixed by the CONNECT target or the SNI.
    Intercepted(Destination),
    /// Plain HTTP redirected by iptables to the transparent listener.
    Redirected {
        /// Where the agent connected (SO_ORIGINAL_DST).
        original: SocketAddr,
    },
}

/// The proxy HTTP application shared by both listeners.
pub type Http = HttpProxy<Pipeline>;

/// The proxy listener: routes and forward proxying through pingora, CONNECT handled here.
pub struct ProxyListener {
    http: Arc<Http>,
    gateway: Arc<Gateway>,
}

impl std::fmt::Debug for ProxyListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyListener").finish_non_exhaustive()
    }
}

impl ProxyListener {
    /// A listener handing plain requests to `http` and serving CONNECT for `gateway`.
    pub fn new(http: Arc<Http>, gateway: Arc<Gateway>) -> ProxyListener {
        ProxyListener { http, gateway }
    }
}

#[async_trait]
impl ServerApp for ProxyListener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !stream.as_any().is::<L4Stream>() {
            return self.http.process_new(stream, shutdown).await;
        }
        let mut l4 = *stream.into_any().downcast::<L4Stream>().ok()?;
        // CONNECT opens its connection (as every client sends it); anything else is pingora's.
        let prefix = match tokio::time::timeout(FIRST_BYTE_TIMEOUT, sniff_connect(&mut l4)).await {
            Ok(Ok(prefix)) => prefix,
            Ok(Err(_)) | Err(_) => return None,
        };
        if prefix.as_slice() == b"CONNECT " {
            connect::serve(&self.gateway, &self.http, l4, prefix, shutdown).await;
            return None;
        }
        l4.rewind(&prefix);
        self.http.process_new(Box::new(l4), shutdown).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.http).await;
    }
}

/// The transparent listener: connections redirected by iptables.
pub struct TransparentListener {
    http: Arc<Http>,
    gateway: Arc<Gateway>,
}

impl std::fmt::Debug for TransparentListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransparentListener")
            .finish_non_exhaustive()
    }
}

impl TransparentListener {
    /// A listener running redirected connections through `http` for `gateway`.
    pub fn new(http: Arc<Http>, gateway: Arc<Gateway>) -> TransparentListener {
        TransparentListener { http, gateway }
    }
}

#[async_trait]
impl ServerApp for TransparentListener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let l4 = *stream.into_any().downcast::<L4Stream>().ok()?;
        transparent::serve(&self.gateway, &self.http, l4, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.http).await;
    }
}

/// Read just enough to tell whether the connection starts with `CONNECT `: stops at the
/// first byte that rules it out, so a short plain request is never waited on.
async fn sniff_connect(stream: &mut L4Stream) -> std::io::Result<Vec<u8>> {
    const WORD: &[u8] = b"CONNECT ";
    let mut prefix = Vec::with_capacity(WORD.len());
    let mut byte = [0u8; 1];
    while prefix.len() < WORD.len() {
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        prefix.extend_from_slice(&byte);
        if !WORD.starts_with(&prefix) {
            break;
        }
    }
    Ok(prefix)
}

/// Serve HTTP/1.1 requests on `stream` through the pipeline, keep-alive included, each
/// request carrying `inbound`.
async fn serve_http(http: &Arc<Http>, stream: Stream, inbound: Inbound, shutdown: &ShutdownWatch) {
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive(if *shutdown.borrow() {
        None
    } else {
        Some(KEEPALIVE_SECS)
    });
    session.set_connection_user_context(Some(Box::new(inbound)));
    let mut result = http.process_new_http(session, shutdown).await;
    while let Some((stream, settings)) = result.map(|r| r.consume()) {
        let mut session = ServerSession::new_http1(stream);
        if let Some(settings) = settings {
            // Carries the Inbound back in (Pipeline::persist_connection_context).
            settings.apply_to_session(&mut session);
        }
        result = http.process_new_http(session, shutdown).await;
    }
}

/// Write `refusal` as a complete HTTP/1.1 problem response on a raw connection, then close it.
async fn refuse_raw<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    refusal: &Refusal,
    ids: Ids<'_>,
) {
    let problem = problem::problem(refusal);
    let body: Bytes = problem::body(&problem, ids);
    let reason = http::StatusCode::from_u16(problem.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        problem.status,
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// The destination a request is accepted against: fixed by its connection, or `None` for
/// the proxy listener's own requests (routes, absolute-form). On a redirected plain-HTTP
/// connection the `Host` header names the destination and must agree with the address the
/// agent connected to.
pub async fn destination(
    inbound: Option<&Inbound>,
    req: &RequestHeader,
    resolve_timeout: Duration,
) -> Result<Option<Destination>, Refusal> {
    match inbound {
        None => Ok(None),
        Some(Inbound::Intercepted(d)) => Ok(Some(d.clone())),
        Some(Inbound::Redirected { original }) => {
            transparent::plain_destination(*original, req, resolve_timeout)
                .await
                .map(Some)
        }
    }
}

/// `host:port`, IPv6 in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
