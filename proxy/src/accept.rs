//! Accept, on the data path: the listeners. The proxy listener serves named routes, forward
//! proxying and CONNECT on one port (a CONNECT is answered, its TLS terminated with a minted
//! certificate and the decrypted requests run through the pipeline); the transparent listener
//! serves connections iptables redirected, by original destination (plain HTTP) or SNI (TLS).
//!
//! Every agent connection is first admitted by the [`Gate`] (`limits.max_connections`), and
//! every HTTP/1 connection is served through [`serve_http`]: its requests bounded by
//! [`guard`] (head time and size, idle time, buffered bytes), pipelined requests answered in
//! order.
//!
//! A connection whose destination is fixed (a tunnel, a redirect) carries an [`Inbound`] into
//! every request's [`crate::pipeline::Exchange`], as pingora's connection user context.

mod connect;
pub mod gate;
mod guard;
mod intercept;
mod splice;
#[cfg(test)]
mod tests;
mod transparent;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

pub use gate::Gate;
pub use guard::HeadRead;

use gate::Listener;

use crate::gateway::Gateway;
use crate::pipeline::Pipeline;
use crate::problem::{self, Ids, Refusal};

/// Longest CONNECT request head read (request line and headers).
pub const MAX_CONNECT_HEAD: usize = 8 * 1024;
/// Time a client has to complete the TLS handshake toolgate answers it with.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What every agent-facing listener serves with.
#[derive(Clone)]
pub struct Front {
    http: Arc<Http>,
    gateway: Arc<Gateway>,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front").finish_non_exhaustive()
    }
}

impl Front {
    /// Requests go through `http`, for `gateway`, on connections `gate` admits.
    pub fn new(http: Arc<Http>, gateway: Arc<Gateway>, gate: Arc<Gate>) -> Front {
        Front {
            http,
            gateway,
            gate,
        }
    }

    /// Admit a connection on `listener`, or count and log its refusal.
    fn admit(&self, listener: Listener) -> Result<gate::Ticket, usize> {
        let max = self.gateway.snapshot().config.limits.max_connections;
        self.gate.admit(listener, max).ok_or_else(|| {
            self.gateway.metrics.connection_refused(listener.as_str());
            self.gate.log_refusal(listener, max);
            max
        })
    }
}

/// The proxy listener: routes and forward proxying through pingora, CONNECT handled here.
#[derive(Debug)]
pub struct ProxyListener(Front);

impl ProxyListener {
    /// A listener serving `front`.
    pub fn new(front: Front) -> ProxyListener {
        ProxyListener(front)
    }
}

#[async_trait]
impl ServerApp for ProxyListener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let front = &self.0;
        let ticket = front.admit(Listener::Proxy);
        if !stream.as_any().is::<L4Stream>() {
            if ticket.is_ok() {
                serve_http(front, stream, None, None, shutdown).await;
            }
            return None;
        }
        let mut l4 = *stream.into_any().downcast::<L4Stream>().ok()?;
        let _ticket = match ticket {
            Ok(ticket) => ticket,
            Err(max) => {
                front.gate.refuse(l4, max).await;
                return None;
            }
        };
        let limits = front.gateway.snapshot().config.limits.clone();
        let mut first = [0u8; 1];
        match tokio::time::timeout(limits.idle_timeout, l4.read(&mut first)).await {
            Ok(Ok(1)) => {}
            _ => return None,
        }
        let first_byte = Instant::now();
        let head_deadline = tokio::time::Instant::from_std(first_byte + limits.head_timeout);
        // CONNECT opens its connection (as every client sends it); anything else is pingora's.
        let prefix =
            match tokio::time::timeout_at(head_deadline, sniff_connect(&mut l4, first)).await {
                Ok(Ok(prefix)) => prefix,
                Ok(Err(_)) | Err(_) => return None,
            };
        if prefix.as_slice() == b"CONNECT " {
            connect::serve(front, l4, prefix, head_deadline, shutdown).await;
            return None;
        }
        l4.rewind(&prefix);
        serve_http(front, Box::new(l4), None, Some(first_byte), shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.0.http).await;
    }
}

/// The transparent listener: connections redirected by iptables.
#[derive(Debug)]
pub struct TransparentListener(Front);

impl TransparentListener {
    /// A listener running redirected connections through `front`.
    pub fn new(front: Front) -> TransparentListener {
        TransparentListener(front)
    }
}

#[async_trait]
impl ServerApp for TransparentListener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Over the cap the connection is closed unanswered: its client may be speaking TLS.
        let _ticket = self.0.admit(Listener::Transparent).ok()?;
        let l4 = *stream.into_any().downcast::<L4Stream>().ok()?;
        transparent::serve(&self.0, l4, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.0.http).await;
    }
}

/// Read just enough to tell whether the connection starts with `CONNECT `: stops at the
/// first byte that rules it out, so a short plain request is never waited on.
async fn sniff_connect(stream: &mut L4Stream, first: [u8; 1]) -> std::io::Result<Vec<u8>> {
    const WORD: &[u8] = b"CONNECT ";
    let mut prefix = Vec::with_capacity(WORD.len());
    prefix.extend_from_slice(&first);
    let mut byte = [0u8; 1];
    while prefix.len() < WORD.len() && WORD.starts_with(&prefix) {
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        prefix.extend_from_slice(&byte);
    }
    Ok(prefix)
}

/// Serve HTTP/1.1 requests on `stream` through the pipeline, keep-alive and pipelining
/// included, each request bounded by [`guard`] and carrying `inbound`. `first_byte`: when the
/// first request's first byte arrived, if the listener read it already.
async fn serve_http(
    front: &Front,
    stream: Stream,
    inbound: Option<Inbound>,
    first_byte: Option<Instant>,
    shutdown: &ShutdownWatch,
) {
    let via = match &inbound {
        None => "proxy",
        Some(Inbound::Intercepted(d)) => d.via.as_str(),
        Some(Inbound::Redirected { .. }) => "transparent",
    };
    let (guarded, connection) = guard::Guarded::new(
        stream,
        front.gate.clone(),
        front.gateway.clone(),
        via,
        first_byte,
    );
    let mut session = ServerSession::new_http1(Box::new(guarded));
    session.set_keepalive(if *shutdown.borrow() {
        None
    } else {
        Some(keepalive_secs(&front.gateway))
    });
    // Requests written back to back are answered in order (RFC 9112 §9.3.2), one at a time;
    // without this pingora drops every request after the first. The setting carries over to
    // the connection's later sessions.
    session.set_pipelining_enabled(true);
    if let Some(inbound) = inbound {
        session.set_connection_user_context(Some(Box::new(inbound)));
    }
    let mut result = connection
        .serve(front.http.process_new_http(session, shutdown))
        .await;
    while let Some((stream, settings)) = result.map(|r| r.consume()) {
        connection.begin();
        let mut session = ServerSession::new_http1(stream);
        if let Some(settings) = settings {
            // Carries the Inbound back in (Pipeline::persist_connection_context), and any
            // pipelined bytes already read.
            settings.apply_to_session(&mut session);
        }
        result = connection
            .serve(front.http.process_new_http(session, shutdown))
            .await;
    }
}

/// pingora's keep-alive timeout, whole seconds (0 would mean none): the guard enforces
/// `limits.idle_timeout` exactly; this only has to be no shorter.
fn keepalive_secs(gateway: &Gateway) -> u64 {
    let idle = gateway.snapshot().config.limits.idle_timeout;
    idle.as_secs() + u64::from(idle.subsec_nanos() > 0)
}

/// A complete HTTP/1.1 problem response for `refusal`, closing the connection.
fn problem_response(refusal: &Refusal, ids: Ids<'_>) -> Bytes {
    let problem = problem::problem(refusal);
    let body = problem::body(&problem, ids);
    let reason = http::StatusCode::from_u16(problem.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let retry = if problem.status == 503 {
        "retry-after: 1\r\n"
    } else {
        ""
    };
    let mut answer = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\ncache-control: no-store\r\n{retry}connection: close\r\n\r\n",
        problem.status,
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Bytes::from(answer)
}

/// Write `refusal` as a complete HTTP/1.1 problem response on a raw connection, then close it.
async fn refuse_raw<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    refusal: &Refusal,
    ids: Ids<'_>,
) {
    let answer = problem_response(refusal, ids);
    let _ = stream.write_all(&answer).await;
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
