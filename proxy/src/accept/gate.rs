//! Admission: how many connections the listeners hold, what all of them may buffer, and the
//! open-file limit that has to fit them.
//!
//! Bounds: agent connections (proxy and transparent listeners together) ≤
//! `limits.max_connections`, and ≤ what the open-file limit leaves after [`RESERVED_FDS`] at
//! two descriptors each (the agent's and the tool's); bytes of request heads and bodies held
//! (see `guard`) ≤ `limits.max_buffered_bytes`; admin connections ≤ [`MAX_ADMIN_CONNECTIONS`].
//! A connection over the agent cap is answered 503 on the proxy listener and closed on the
//! transparent one (its client may be speaking TLS), and counted. The admin listener closes its
//! oldest connection instead of refusing the new one, so a probe always gets in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use toolgate_policy::classify::UNKNOWN;

use crate::problem::{Ids, Refusal};
use crate::record::metrics::{Load, Metrics};

/// Descriptors kept for everything but agent connections: the admin listener's connections,
/// the operator socket, pooled idle upstream connections (pingora keeps up to 128), files,
/// and the runtimes' own.
pub const RESERVED_FDS: u64 = 256;
/// Most connections the admin listener holds; a new one closes the oldest.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Most refused connections kept open at once to let their 503 be read.
const MAX_LINGERING: usize = 64;
/// How long a refused connection is kept open (reading and discarding) after its 503, so that
/// closing it with the request unread does not reset the answer away.
const LINGER: Duration = Duration::from_millis(250);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// An agent-facing listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Proxy,
    Transparent,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Proxy => "proxy",
            Listener::Transparent => "transparent",
        }
    }

    fn gauge(self, load: &Load) -> &AtomicUsize {
        match self {
            Listener::Proxy => &load.proxy,
            Listener::Transparent => &load.transparent,
        }
    }
}

/// The admission state shared by every listener.
#[derive(Debug)]
pub struct Gate {
    load: Arc<Load>,
    /// The most agent connections the open-file limit leaves room for.
    room: usize,
    lingering: AtomicUsize,
    /// When a refusal was last logged (seconds since the epoch): one line a second at most.
    logged: AtomicU64,
    admin: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    admin_ids: AtomicU64,
}

/// An admitted agent connection; the place is given back on drop.
#[derive(Debug)]
pub struct Ticket {
    load: Arc<Load>,
    listener: Listener,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.load.agent_connections.fetch_sub(1, Ordering::AcqRel);
        self.listener
            .gauge(&self.load)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// An admin connection's place; `evicted` resolves when a newer connection took it.
#[derive(Debug)]
pub struct AdminTicket {
    gate: Arc<Gate>,
    id: u64,
    evict: Arc<Notify>,
}

impl AdminTicket {
    /// Resolves once this connection must close to make room for a newer one.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for AdminTicket {
    fn drop(&mut self) {
        self.gate.load.admin.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut queue) = self.gate.admin.lock() {
            queue.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Gate {
    /// A gate for a process that may open `open_files` descriptors (`None`: no limit).
    pub fn new(load: Arc<Load>, open_files: Option<u64>) -> Gate {
        Gate {
            load,
            room: room(open_files),
            lingering: AtomicUsize::new(0),
            logged: AtomicU64::new(0),
            admin: Mutex::new(VecDeque::with_capacity(MAX_ADMIN_CONNECTIONS)),
            admin_ids: AtomicU64::new(0),
        }
    }

    /// The most agent connections the open-file limit leaves room for.
    pub fn room(&self) -> usize {
        self.room
    }

    /// Admit a connection on `listener` unless `max` agent connections (or all the open-file
    /// limit has room for) are open.
    pub fn admit(&self, listener: Listener, max: usize) -> Option<Ticket> {
        let cap = max.min(self.room);
        self.load
            .agent_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < cap).then_some(open + 1)
            })
            .ok()?;
        listener.gauge(&self.load).fetch_add(1, Ordering::Relaxed);
        Some(Ticket {
            load: self.load.clone(),
            listener,
        })
    }

    /// Admit an admin connection, closing the oldest one when [`MAX_ADMIN_CONNECTIONS`] are
    /// open: connections the agent opens to the admin port cannot keep a probe out.
    pub fn admit_admin(self: &Arc<Self>, metrics: &Metrics) -> AdminTicket {
        let id = self.admin_ids.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        if let Ok(mut queue) = self.admin.lock() {
            while queue.len() >= MAX_ADMIN_CONNECTIONS {
                if let Some((_, oldest)) = queue.pop_front() {
                    // A stored permit: the oldest closes even if it is not waiting yet.
                    oldest.notify_one();
                    metrics.connection_refused("admin");
                }
            }
            queue.push_back((id, evict.clone()));
        }
        self.load.admin.fetch_add(1, Ordering::Relaxed);
        AdminTicket {
            gate: self.clone(),
            id,
            evict,
        }
    }

    /// Charge `n` buffered bytes against `limit`; `false` (nothing charged) when they would
    /// go over it.
    pub fn charge(&self, n: usize, limit: usize) -> bool {
        self.load
            .buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    /// Give back `n` bytes charged earlier.
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.load.buffered.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Answer a connection over the cap on the proxy listener with a 503 problem, let the
    /// client read it (briefly, and only for a bounded number at once), and close it.
    pub async fn refuse(&self, mut stream: L4Stream, max: usize) {
        let refusal = overloaded_connections(max.min(self.room));
        let decision_id = uuid::Uuid::now_v7().to_string();
        let trace_id = hex::encode(rand::random::<[u8; 16]>());
        let ids = Ids {
            action: UNKNOWN,
            decision_id: &decision_id,
            trace_id: &trace_id,
        };
        super::refuse_raw(&mut stream, &refusal, ids).await;
        if self.lingering.fetch_add(1, Ordering::AcqRel) < MAX_LINGERING {
            let _ = tokio::time::timeout(LINGER, drain(&mut stream)).await;
        }
        self.lingering.fetch_sub(1, Ordering::AcqRel);
    }

    /// Log that connections are being refused, once a second at most (the counter has them
    /// all).
    pub fn log_refusal(&self, listener: Listener, max: usize) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        if self.logged.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                target: "toolgate::access",
                listener = listener.as_str(),
                open = self.load.agent_connections.load(Ordering::Relaxed),
                "refusing connections: {}",
                overloaded_connections(max.min(self.room))
            );
        }
    }
}

/// The refusal of a connection over the cap of `cap` connections.
fn overloaded_connections(cap: usize) -> Refusal {
    Refusal::Overloaded(format!(
        "toolgate holds its most agent connections ({cap}, limits.max_connections or the open-file limit)"
    ))
}

/// Read and discard what the client sends, up to [`LINGER_BYTES`], until it closes.
async fn drain(stream: &mut L4Stream) {
    let mut sink = [0u8; 4096];
    let mut read = 0;
    while read < LINGER_BYTES {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

/// The most agent connections `open_files` descriptors fit: two each (the agent's and the
/// tool's) after [`RESERVED_FDS`], and at least one.
fn room(open_files: Option<u64>) -> usize {
    match open_files {
        None => usize::MAX,
        Some(n) => usize::try_from(n.saturating_sub(RESERVED_FDS) / 2)
            .unwrap_or(usize::MAX)
            .max(1),
    }
}

/// The open-file limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: Option<u64>,
    /// The soft limit now in force (`None`: unlimited).
    pub now: Option<u64>,
}

/// Raise the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit: a process started
/// with the common default of 1,024 would otherwise run out of descriptors long before
/// `limits.max_connections`.
pub fn raise_open_files() -> Result<OpenFiles, std::io::Error> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    // Linux refuses an unlimited soft RLIMIT_NOFILE: the kernel's ceiling is fs.nr_open.
    let target = limit.maximum.or_else(nr_open);
    if target.is_none() || target == before {
        return Ok(OpenFiles {
            before,
            now: before,
        });
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: target,
            maximum: limit.maximum,
        },
    )?;
    Ok(OpenFiles {
        before,
        now: getrlimit(Resource::Nofile).current,
    })
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keeps_reserved_descriptors_and_two_per_connection() {
        assert_eq!(room(Some(1024)), 384);
        assert_eq!(room(Some(20_000)), 9_872);
        assert_eq!(room(Some(100)), 1);
        assert_eq!(room(None), usize::MAX);
    }

    #[test]
    fn admission_stops_at_the_cap_and_drops_give_places_back() {
        let gate = Gate::new(Arc::default(), Some(1024));
        let a = gate.admit(Listener::Proxy, 2).unwrap();
        let b = gate.admit(Listener::Transparent, 2).unwrap();
        assert!(gate.admit(Listener::Proxy, 2).is_none());
        assert_eq!(gate.load.proxy.load(Ordering::Relaxed), 1);
        assert_eq!(gate.load.transparent.load(Ordering::Relaxed), 1);
        drop(a);
        let c = gate.admit(Listener::Proxy, 2).unwrap();
        drop((b, c));
        assert_eq!(gate.load.agent_connections.load(Ordering::Relaxed), 0);
        assert_eq!(gate.load.proxy.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_descriptor_room_caps_a_larger_configured_limit() {
        let gate = Gate::new(Arc::default(), Some(258));
        let _only = gate.admit(Listener::Proxy, 1000).unwrap();
        assert!(gate.admit(Listener::Proxy, 1000).is_none());
    }

    #[test]
    fn charges_never_exceed_the_budget() {
        let gate = Gate::new(Arc::default(), None);
        assert!(gate.charge(60, 100));
        assert!(!gate.charge(41, 100));
        assert!(gate.charge(40, 100));
        assert!(!gate.charge(1, 100));
        gate.release(100);
        assert_eq!(gate.load.buffered.load(Ordering::Relaxed), 0);
        assert!(!gate.charge(usize::MAX, usize::MAX - 1));
    }

    #[tokio::test]
    async fn a_new_admin_connection_evicts_the_oldest() {
        let gate = Arc::new(Gate::new(Arc::default(), None));
        let metrics = Metrics::default();
        let tickets: Vec<_> = (0..MAX_ADMIN_CONNECTIONS)
            .map(|_| gate.admit_admin(&metrics))
            .collect();
        let newest = gate.admit_admin(&metrics);
        tokio::time::timeout(Duration::from_secs(1), tickets[0].evicted())
            .await
            .expect("the oldest is told to close");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), tickets[1].evicted())
                .await
                .is_err(),
            "only the oldest"
        );
        assert!(metrics
            .render()
            .contains("toolgate_connections_refused_total{listener=\"admin\"} 1\n"));
        drop(tickets);
        drop(newest);
        assert_eq!(gate.load.admin.load(Ordering::Relaxed), 0);
        assert!(gate.admin.lock().unwrap().is_empty());
    }
}
