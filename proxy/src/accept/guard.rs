//! The clock and the meter on an agent's HTTP/1 connection. pingora bounds each read of a
//! request head, not the head, and reads heads up to 1 MiB; [`Guarded`] wraps the connection
//! below pingora and bounds each request, from its first byte:
//!
//! - idle: the first byte of a request must come within `limits.idle_timeout` (on a new
//!   connection, and between kept-alive requests), or the connection is closed quietly;
//! - head: the head must be whole within `limits.head_timeout` of its first byte (else 408)
//!   and within `limits.max_head_bytes` (else 431); every byte of it is charged to the shared
//!   budget `limits.max_buffered_bytes` (when that is spent: 503);
//! - body: bytes read after the head are charged too, up to the body cap (what toolgate may
//!   buffer to classify); when the budget is spent, reading waits (backpressure) rather than
//!   fails, bounded by pingora's read timeout.
//!
//! The charge of a request is given back when the next request begins or the connection
//! closes. A refusal is written straight onto the connection (pingora has no response yet to
//! write), and the read then fails, so pingora closes it.
//!
//! Where the head ends is pingora's to know: a downstream module ([`HeadRead`]) runs as soon
//! as pingora has parsed a head and marks it read through a task-local the serve loop sets
//! ([`Connection::serve`]). Bytes of a pipelined request read along with the previous
//! request's body were charged to that request; its head's clock starts at the next read.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use toolgate_policy::classify::UNKNOWN;
use toolgate_policy::config::{body_cap, Limits};

use super::gate::Gate;
use crate::gateway::Gateway;
use crate::problem::{Ids, Refusal};

mod io;

/// While waiting for room in the buffer budget, how often reading tries again.
const BUDGET_RETRY: Duration = Duration::from_millis(20);
/// How long writing a refusal, and then letting the client read it, may take before the
/// connection is simply closed.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);
/// Most bytes read and discarded after a refusal: closing with the client's bytes unread
/// resets the connection, and a reset can destroy the answer before the client reads it.
const LINGER_BYTES: usize = 64 * 1024;

tokio::task_local! {
    /// The connection whose requests this task is serving.
    static CONNECTION: Arc<Progress>;
}

/// How far a connection's requests have come, shared by the serve loop, [`HeadRead`] and the
/// [`Guarded`] stream.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Requests begun on the connection.
    begun: AtomicU64,
    /// The latest request whose head pingora parsed.
    parsed: AtomicU64,
}

/// Serving one connection: begin each request, with [`HeadRead`] able to find it.
#[derive(Debug, Clone)]
pub(super) struct Connection(Arc<Progress>);

impl Connection {
    /// A new request begins on this connection.
    pub(super) fn begin(&self) {
        self.0.begun.fetch_add(1, Ordering::AcqRel);
    }

    /// Run `serving` (pingora serving one request) where [`HeadRead`] finds this connection.
    pub(super) async fn serve<F: Future>(&self, serving: F) -> F::Output {
        CONNECTION.scope(self.0.clone(), serving).await
    }
}

/// The pingora module that marks a request's head read.
#[derive(Debug)]
pub struct HeadRead;

impl HttpModuleBuilder for HeadRead {
    fn init(&self) -> Module {
        Box::new(HeadSeen)
    }
}

#[derive(Debug)]
struct HeadSeen;

#[async_trait]
impl HttpModule for HeadSeen {
    async fn request_header_filter(&mut self, _req: &mut RequestHeader) -> pingora::Result<()> {
        let _ = CONNECTION.try_with(|p| {
            p.parsed
                .store(p.begun.load(Ordering::Acquire), Ordering::Release)
        });
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the first byte of a request.
    Idle,
    /// Reading a head.
    Head,
    /// The head is read; body bytes are charged up to the body cap.
    Body,
    /// Writing a refusal before closing.
    Refusing { answer: Bytes, written: usize },
    /// The refusal is written and the connection half-closed: reading what the client still
    /// sends (bounded), so that closing does not reset the answer away.
    Lingering { drained: usize },
    /// Refused or timed out: every read fails.
    Closed,
}

/// The bounds of the request being read, from the configuration it began under.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    idle: Duration,
    head: Duration,
    max_head: usize,
    body_cap: usize,
    budget: usize,
}

impl Bounds {
    fn of(limits: &Limits) -> Bounds {
        Bounds {
            idle: limits.idle_timeout,
            head: limits.head_timeout,
            max_head: limits.max_head_bytes,
            body_cap: body_cap(limits),
            budget: limits.max_buffered_bytes,
        }
    }
}

/// An agent connection with its requests bounded in time and bytes (see the module docs).
pub(super) struct Guarded {
    inner: Stream,
    progress: Arc<Progress>,
    gate: Arc<Gate>,
    gateway: Arc<Gateway>,
    via: &'static str,
    /// The request the state below is for.
    request: u64,
    phase: Phase,
    bounds: Bounds,
    deadline: Pin<Box<Sleep>>,
    /// Bytes of the current head read so far.
    head_bytes: usize,
    /// Bytes of the current request charged to the budget.
    charged: usize,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("request", &self.request)
            .field("phase", &self.phase)
            .field("charged", &self.charged)
            .finish_non_exhaustive()
    }
}

impl Guarded {
    /// Guard `inner`, whose first request begins now; `first_byte` is when its first byte
    /// arrived, when the listener already read it. Returns the stream and the connection
    /// handle its serve loop begins requests with.
    pub(super) fn new(
        inner: Stream,
        gate: Arc<Gate>,
        gateway: Arc<Gateway>,
        via: &'static str,
        first_byte: Option<std::time::Instant>,
    ) -> (Guarded, Connection) {
        let progress = Arc::new(Progress::default());
        progress.begun.store(1, Ordering::Release);
        let bounds = Bounds::of(&gateway.snapshot().config.limits);
        let (phase, deadline) = match first_byte {
            Some(at) => (Phase::Head, Instant::from_std(at) + bounds.head),
            None => (Phase::Idle, Instant::now() + bounds.idle),
        };
        let guarded = Guarded {
            inner,
            progress: progress.clone(),
            gate,
            gateway,
            via,
            request: 1,
            phase,
            bounds,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            head_bytes: 0,
            charged: 0,
        };
        (guarded, Connection(progress))
    }

    /// Catch up with the serve loop and pingora: a new request resets the state; a parsed
    /// head ends the head's bounds.
    fn sync(&mut self) {
        let begun = self.progress.begun.load(Ordering::Acquire);
        if begun != self.request {
            self.request = begun;
            self.gate.release(std::mem::take(&mut self.charged));
            self.head_bytes = 0;
            self.bounds = Bounds::of(&self.gateway.snapshot().config.limits);
            if matches!(self.phase, Phase::Idle | Phase::Head | Phase::Body) {
                self.phase = Phase::Idle;
            }
            let deadline = Instant::now() + self.bounds.idle;
            self.deadline.as_mut().reset(deadline);
        }
        if matches!(self.phase, Phase::Idle | Phase::Head)
            && self.progress.parsed.load(Ordering::Acquire) == self.request
        {
            self.phase = Phase::Body;
        }
    }

    /// Answer `refusal` on the connection, then fail every read.
    fn refuse(&mut self, refusal: Refusal, reason: &'static str) {
        let decision_id = uuid::Uuid::now_v7().to_string();
        let trace_id = hex::encode(rand::random::<[u8; 16]>());
        let ids = Ids {
            action: UNKNOWN,
            decision_id: &decision_id,
            trace_id: &trace_id,
        };
        let answer = super::problem_response(&refusal, ids);
        self.gateway.metrics.head_refused(reason);
        let peer = self
            .inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(PeerAddr::to_string))
            .unwrap_or_default();
        tracing::info!(
            target: "toolgate::access",
            decision_id = %decision_id,
            via = self.via,
            peer = %peer,
            status = crate::problem::problem(&refusal).status,
            head_bytes = self.head_bytes,
            failure = %refusal,
            "request head refused"
        );
        self.phase = Phase::Refusing { answer, written: 0 };
        let deadline = Instant::now() + REFUSAL_WRITE;
        self.deadline.as_mut().reset(deadline);
    }

    /// Write the refusal, then linger; ready once the connection can be closed.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if let Phase::Refusing { answer, written } = &mut self.phase {
            while let Some(rest) = answer.get(*written..).filter(|r| !r.is_empty()) {
                match ready!(Pin::new(&mut self.inner).poll_write(cx, rest)) {
                    Ok(0) | Err(_) => return Poll::Ready(()),
                    Ok(n) => *written += n,
                }
            }
            let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
            let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
            self.phase = Phase::Lingering { drained: 0 };
        }
        let mut sink = [0u8; 4096];
        while let Phase::Lingering { drained } = &mut self.phase {
            if *drained >= LINGER_BYTES {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut sink);
            match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => *drained += buf.filled().len(),
                _ => return Poll::Ready(()),
            }
        }
        Poll::Ready(())
    }

    /// Read a head's bytes, within its allowance and the budget.
    fn poll_head(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<Step> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(match self.phase {
                // A connection that stays silent is closed without a word.
                Phase::Idle => Step::Eof,
                _ => Step::Refuse(Refusal::HeadTimeout(self.bounds.head), "head_timeout"),
            });
        }
        let allowance = self.bounds.max_head.saturating_sub(self.head_bytes);
        if allowance == 0 {
            return Poll::Ready(Step::Refuse(
                Refusal::HeadTooLarge(self.bounds.max_head),
                "head_too_large",
            ));
        }
        let before = buf.filled().len();
        let n = if buf.remaining() <= allowance {
            // The whole buffer is within the allowance: read into it as it is. (A limited
            // view needs an initialised slice, and zeroing pingora's fresh head buffer on
            // every read cost ~12 k instructions per request.)
            if let Err(e) = ready!(Pin::new(&mut self.inner).poll_read(cx, buf)) {
                return Poll::Ready(Step::Error(e));
            }
            buf.filled().len().saturating_sub(before)
        } else {
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(allowance));
            if let Err(e) = ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited)) {
                return Poll::Ready(Step::Error(e));
            }
            let n = limited.filled().len();
            buf.advance(n);
            n
        };
        if n == 0 {
            return Poll::Ready(Step::Eof);
        }
        if !self.gate.charge(n, self.bounds.budget) {
            // Refused: pingora must not see these bytes.
            buf.set_filled(before);
            return Poll::Ready(Step::Refuse(
                Refusal::Overloaded(
                    "the memory toolgate may hold for request heads and bodies is in use (limits.max_buffered_bytes)".into(),
                ),
                "buffers_full",
            ));
        }
        self.charged += n;
        self.head_bytes += n;
        if matches!(self.phase, Phase::Idle) {
            self.phase = Phase::Head;
            let deadline = Instant::now() + self.bounds.head;
            self.deadline.as_mut().reset(deadline);
        }
        Poll::Ready(Step::Read)
    }

    /// Read body bytes, charging them up to the body cap; waits while the budget is spent.
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // A request is charged its head and at most the body cap after it.
        let owed = self
            .head_bytes
            .saturating_add(self.bounds.body_cap)
            .saturating_sub(self.charged)
            .min(buf.remaining());
        if owed > 0 && !self.gate.charge(owed, self.bounds.budget) {
            let retry = Instant::now() + BUDGET_RETRY;
            self.deadline.as_mut().reset(retry);
            // Registers the wake-up; a timer already due is polled again next time.
            let _ = self.deadline.as_mut().poll(cx);
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        // Keep what was read (up to the cap), give back the rest of the reservation.
        let kept = n.min(owed);
        self.gate.release(owed.saturating_sub(kept));
        self.charged += kept;
        read
    }
}

/// What one attempt at reading a head came to.
enum Step {
    Read,
    Eof,
    Refuse(Refusal, &'static str),
    Error(std::io::Error),
}

fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "toolgate refused the request head",
    )
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.gate.release(self.charged);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.sync();
        loop {
            match this.phase {
                Phase::Closed => return Poll::Ready(Err(closed())),
                Phase::Refusing { .. } | Phase::Lingering { .. } => {
                    ready!(this.poll_refusal(cx));
                    this.phase = Phase::Closed;
                }
                Phase::Body => return this.poll_body(cx, buf),
                Phase::Idle | Phase::Head => match ready!(this.poll_head(cx, buf)) {
                    Step::Read => return Poll::Ready(Ok(())),
                    Step::Eof => {
                        this.phase = Phase::Closed;
                        return Poll::Ready(Ok(()));
                    }
                    Step::Error(e) => return Poll::Ready(Err(e)),
                    Step::Refuse(refusal, reason) => this.refuse(refusal, reason),
                },
            }
        }
    }
}
