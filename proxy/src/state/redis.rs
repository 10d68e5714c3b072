//! The Redis backend (`state.backend: redis`, Redis ≥ 7 or Valkey): one state shared by every
//! toolgate pointed at the same Redis and `state.prefix`, so a task that spans pods has one
//! chain, a revocation stops an agent everywhere and an approval is granted once for all.
//!
//! What it holds (`scripts.rs` has the key layout): per task and pool, its meta (last seq,
//! last use, the last action's span, whether its history was cut), its chain (a list) and its
//! labels (a hash); per pool, its tasks by last use and the tombstones of evicted ones; per
//! agent, its labels and its default task; the revocations (one sorted set per kind); the
//! ended tasks and their chain copies (`tasks.rs`); the approvals (one hash each, indexes by
//! digest, head, in-force and ended).
//!
//! Bounds, in Redis: at most `chain.max_actions` entries per task (LTRIM), 33 labels per task
//! and per agent, `state.max_tasks` tasks per pool (the least recently used evicted, with a
//! tombstone so its return says its history was cut) — so at most
//! 2 × max_tasks × (max_actions × ~2.5 KiB + 33 × ~200 B + ~300 B) plus 2 × max_tasks × ~60 B
//! of tombstones; task keys expire `max(chain.idle_ttl, chain.agent_label_ttl)` after their
//! last use, agent labels `chain.agent_label_ttl` after they were last set; revocations,
//! approvals and ended tasks as in memory (10,000 revocations per kind; `approvals.max_pending`
//! in force, as many ended ones within `approvals.retention`; 10,000 ended tasks within
//! `chain.ended_retention`, `chain.max_tasks` chain copies). Agents are not capped: each
//! agent's keys expire.
//!
//! When Redis is slow or gone: every call is bounded by `state.timeout` (the operator API's
//! by at least one second); the connection manager reconnects in the background. With
//! `on_unavailable: deny` the request is refused (503 `state-unavailable`); with `local` it
//! is decided on this instance's own view — the actions it decided while Redis was away and
//! the revocations and ends it last copied from Redis (every 250 ms) — with `input.state.degraded:
//! true` and `history_complete: false`. Approvals always need Redis. A background loop checks
//! Redis every 250 ms: it drives `toolgate_state_available` and `/readyz`, copies revocations
//! when they change, wakes requests held for approval when approvals change, and — if Redis
//! lost its data (restarted without persistence) — writes back the revocations and ends it
//! copied.

mod approvals;
mod codec;
mod entries;
pub mod scripts;
mod sync;
mod tasks;

use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script, Value as Reply};
use regorus::Value;
use serde_json::{json, Value as Json};
use toolgate_policy::approval::{Digest, Verdict};
use toolgate_policy::chain::{self, Action, Outcome, Recorded, SpanRef, Stats, TaskKey, View};
use toolgate_policy::config::{ChainSettings, OnUnavailable, RedisSettings};
use toolgate_policy::labels::MAX_LABELS;
use toolgate_policy::state::{
    rfc3339, Added, Approval, Bounds, End, EndBounds, EndedTask, EndedView, Ending, Entry, Event,
    Held, Issued, Kind, NewApproval, Refused, Revocation, State, Stored, TaskStore, CAPACITY,
};

use self::codec::{
    decision_prefix, entry_of, label_set, outcome_text, pairs, span_of, span_text, with_seq,
};
use super::memory::MemoryStore;
use super::{
    ApprovalFailure, EndFailure, Health, Note, Observed, Op, Reserve, RevokeFailure, StateMetrics,
    StateStore, Unavailable,
};

/// How often the background loop looks at Redis.
const SYNC_EVERY: Duration = Duration::from_millis(250);
/// The shortest time an operator call may take before it is given up.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(1);
/// Locally decided entries remembered (to settle them locally); beyond it the set restarts.
const MAX_LOCAL_ENTRIES: usize = 65_536;

/// Why the Redis backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state.url: {0}")]
    Url(String),
    #[error("cannot start the state backend's thread: {0}")]
    Thread(String),
}

/// The Redis store.
#[derive(Debug)]
pub struct RedisStore {
    shared: Arc<Shared>,
    _loop: Option<std::thread::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

thread_local! {
    /// This thread's connections, one per store alive (a process has one; a reload, a test
    /// more): each driven on the runtime of the thread that uses it.
    static CONNECTIONS: RefCell<Vec<ThreadConn>> = const { RefCell::new(Vec::new()) };
}

/// A thread's connection to one store's Redis.
struct ThreadConn {
    store: Weak<()>,
    /// The store's generation it was opened in ([`Shared::generation`]); `u64::MAX` for the
    /// background loop's own.
    generation: u64,
    conn: ConnectionManager,
}

/// Connections opened per store beyond the loop's: threads past it share the loop's.
const MAX_THREAD_CONNECTIONS: usize = 64;

/// What the store and its background loop share.
#[derive(Debug)]
struct Shared {
    /// The background loop's connection, driven on its thread; and what opens one per
    /// thread that calls Redis ([`Shared::conn`]), under `token`.
    conn: ConnectionManager,
    client: redis::Client,
    config: ConnectionManagerConfig,
    token: Arc<()>,
    /// Bumped when Redis answers again after a failure ([`Shared::up`]): threads then open a
    /// fresh connection instead of spending a call on a broken one's stored error.
    generation: AtomicU64,
    /// When the generation was last bumped (ms since `started`).
    renewed_ms: AtomicU64,
    started: Instant,
    /// Thread connections opened (at most [`MAX_THREAD_CONNECTIONS`]).
    opened: AtomicUsize,
    prefix: String,
    settings: RedisSettings,
    max_actions: usize,
    idle_ttl: Duration,
    agent_label_ttl: Duration,
    /// The local view decided on while Redis is away (`on_unavailable: local`).
    local: MemoryStore,
    /// Entries recorded in the local view, to settle there: (pool, task, seq).
    local_entries: EntrySet,
    /// Plain allows appended by observe, whose decision settle writes with the outcome.
    deferred: EntrySet,
    available: AtomicBool,
    problem: Mutex<Option<String>>,
    /// Approved, unused approvals as last seen (a hint: never trusted to refuse).
    approved: AtomicU64,
    /// The approvals' version as last seen (bumped by any change anywhere).
    approvals_version: AtomicU64,
    /// `approvals.retention` as last given (consume has no bounds of its own).
    retention_ms: AtomicU64,
    events: Mutex<Vec<Event>>,
    /// The default task: agent, number, when Redis last confirmed it.
    default_task: Mutex<Option<(String, u64, Instant)>>,
    metrics: StateMetrics,
    scripts: Scripts,
    /// Chain entries decoded by earlier decisions.
    entries: entries::Entries,
}

#[derive(Debug)]
struct Scripts {
    observe: Script,
    record: Script,
    decided: Script,
    settle: Script,
    default_task: Script,
    revoke: Script,
    end: Script,
    hold: Script,
    decide: Script,
    consume: Script,
    read: Script,
    by_digest: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            observe: Script::new(&scripts::observe()),
            record: Script::new(&scripts::record()),
            decided: Script::new(&scripts::decided()),
            settle: Script::new(scripts::SETTLE),
            default_task: Script::new(scripts::DEFAULT_TASK),
            revoke: Script::new(scripts::REVOKE),
            end: Script::new(scripts::END),
            hold: Script::new(&scripts::hold()),
            decide: Script::new(&scripts::decide()),
            consume: Script::new(&scripts::consume()),
            read: Script::new(&scripts::read()),
            by_digest: Script::new(scripts::BY_DIGEST),
        }
    }
}

fn ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

fn dur_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn pool(task: &TaskKey<'_>) -> &'static str {
    if task.verified {
        "v"
    } else {
        "n"
    }
}

/// The text of a Redis error, for logs and problems (never holds the URL or a password).
fn describe(e: &redis::RedisError) -> String {
    format!("redis: {e}")
}

impl RedisStore {
    /// Connect (lazily: toolgate starts while Redis is down, unready in `deny` mode) and start
    /// the background loop on its own thread and runtime.
    pub fn start(
        settings: &RedisSettings,
        chain: &ChainSettings,
    ) -> Result<RedisStore, StartError> {
        let mut info = settings
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| StartError::Url(format!("cannot be used: {:?}", e.kind())))?;
        if let Some(password) = &settings.password {
            let redis = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(redis);
        }
        let client = redis::Client::open(info).map_err(|e| StartError::Url(describe(&e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(500))))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let settings = settings.clone();
        let chain = chain.clone();
        let handle = std::thread::Builder::new()
            .name("toolgate-state".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let conn = match client.get_connection_manager_lazy(config.clone()) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(describe(&e)));
                            return;
                        }
                    };
                    let shared = Arc::new(Shared::new(conn, (client, config), settings, &chain));
                    shared.adopt_here();
                    if ready_tx.send(Ok(shared.clone())).is_err() {
                        return;
                    }
                    tokio::select! {
                        () = shared.sync_forever() => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .map_err(|e| StartError::Thread(e.to_string()))?;
        let shared = match ready_rx.recv() {
            Ok(Ok(shared)) => shared,
            Ok(Err(e)) => return Err(StartError::Url(e)),
            Err(e) => return Err(StartError::Thread(e.to_string())),
        };
        Ok(RedisStore {
            shared,
            _loop: Some(handle),
            stop: Some(stop_tx),
        })
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Shared {
    fn new(
        conn: ConnectionManager,
        (client, config): (redis::Client, ConnectionManagerConfig),
        settings: RedisSettings,
        chain: &ChainSettings,
    ) -> Shared {
        Shared {
            conn,
            client,
            config,
            token: Arc::new(()),
            generation: AtomicU64::new(0),
            renewed_ms: AtomicU64::new(0),
            started: Instant::now(),
            opened: AtomicUsize::new(0),
            prefix: format!("{}:", settings.prefix),
            max_actions: chain.max_actions.max(1),
            idle_ttl: chain.idle_ttl,
            agent_label_ttl: chain.agent_label_ttl,
            local: MemoryStore::new(chain, State::in_memory()),
            local_entries: EntrySet::default(),
            deferred: EntrySet::default(),
            available: AtomicBool::new(false),
            problem: Mutex::new(Some("not connected yet".into())),
            approved: AtomicU64::new(0),
            approvals_version: AtomicU64::new(0),
            retention_ms: AtomicU64::new(86_400_000),
            events: Mutex::default(),
            default_task: Mutex::default(),
            metrics: StateMetrics::default(),
            scripts: Scripts::new(),
            entries: entries::Entries::default(),
            settings,
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        k.push_str(&parts.concat());
        k
    }

    fn task_key(&self, kind: &str, task: &TaskKey<'_>) -> String {
        self.key(&[kind, ":", pool(task), ":", task.id])
    }

    /// Run `call` within `limit`; a failure marks Redis unavailable and is counted under `op`.
    async fn run<T>(
        &self,
        op: Op,
        limit: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        let result = match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!(
                "redis did not answer within {} (state.timeout)",
                humantime::format_duration(limit)
            )),
        };
        match result {
            Ok(v) => {
                if !self.available.load(Ordering::Acquire) {
                    self.up();
                }
                Ok(v)
            }
            Err(problem) => {
                self.metrics.error(op);
                self.down(&problem);
                Err(Unavailable::new(format!(
                    "toolgate's shared state (Redis) is unavailable: {problem}. What needs it (the task's history, labels, revocations, approvals) cannot be checked, so it is refused until Redis answers again"
                )))
            }
        }
    }

    fn down(&self, problem: &str) {
        if self.available.swap(false, Ordering::AcqRel) {
            tracing::error!(target: "toolgate::state", problem, "shared state unavailable");
        }
        if let Ok(mut p) = self.problem.lock() {
            *p = Some(problem.to_string());
        }
    }

    fn local_mode(&self) -> bool {
        self.settings.on_unavailable == OnUnavailable::Local
    }

    /// The connection of the calling thread: a pingora worker's round trips to Redis are
    /// driven on its own runtime, so a reply wakes the request's thread directly instead of
    /// crossing to the background loop's thread and back (two thread wake-ups per round trip
    /// fewer). Off a runtime, past [`MAX_THREAD_CONNECTIONS`], or when a thread's connection
    /// cannot be made: the loop's.
    fn conn(&self) -> ConnectionManager {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.conn.clone();
        }
        let generation = self.generation.load(Ordering::Acquire);
        CONNECTIONS
            .try_with(|c| {
                let Ok(mut c) = c.try_borrow_mut() else {
                    return self.conn.clone();
                };
                let here =
                    |t: &ThreadConn| std::ptr::eq(t.store.as_ptr(), Arc::as_ptr(&self.token));
                match c.iter().find(|t| here(t)) {
                    Some(t) if t.generation >= generation => return t.conn.clone(),
                    // Opened before Redis went away or came back: replaced below.
                    Some(_) => {}
                    None => {
                        if self.opened.fetch_add(1, Ordering::AcqRel) >= MAX_THREAD_CONNECTIONS {
                            self.opened.fetch_sub(1, Ordering::AcqRel);
                            return self.conn.clone();
                        }
                    }
                }
                // This store's stale connection, and those of stores gone (a reload), close here.
                c.retain(|t| t.store.strong_count() > 0 && !here(t));
                match self.client.get_connection_manager_lazy(self.config.clone()) {
                    Ok(conn) => {
                        c.push(ThreadConn {
                            store: Arc::downgrade(&self.token),
                            generation,
                            conn: conn.clone(),
                        });
                        conn
                    }
                    Err(_) => self.conn.clone(),
                }
            })
            .unwrap_or_else(|_| self.conn.clone())
    }

    /// The background loop's thread uses the loop's connection, which its ticks keep healed.
    fn adopt_here(&self) {
        let _ = CONNECTIONS.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                c.push(ThreadConn {
                    store: Arc::downgrade(&self.token),
                    generation: u64::MAX,
                    conn: self.conn.clone(),
                });
            }
        });
    }

    /// Redis answered after a failure (a call, or the loop): available again, and every thread
    /// opens a fresh connection — one opened during the outage may hold its failure. At most
    /// once per [`SYNC_EVERY`], so calls failing and succeeding by turns (an overload) cannot
    /// make every thread reconnect on every call.
    pub(super) fn up(&self) {
        if !self.available.swap(true, Ordering::AcqRel) {
            let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let last = self.renewed_ms.load(Ordering::Acquire);
            if now.saturating_sub(last) >= dur_ms(SYNC_EVERY)
                && self
                    .renewed_ms
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            tracing::info!(target: "toolgate::state", "shared state available");
        }
    }

    fn observe_local(
        &self,
        task: &TaskKey<'_>,
        agent: &str,
        now: SystemTime,
    ) -> Result<Observed, Unavailable> {
        self.metrics.degraded();
        let revoked = self.local.state.revoked(task.id, agent, now)?;
        let ended = self
            .local
            .state
            .ended(task.id, now)?
            .map(|v| Box::new(v.task));
        let mut view = self.local.ledger.view(task, agent, now);
        // The local view never holds the other replicas' actions.
        view.history_complete = false;
        Ok(Observed {
            revoked,
            ended,
            view,
            note: Some(Note {
                backend: "redis",
                degraded: true,
            }),
            reserved: None,
        })
    }

    /// Record `action` on this sidecar's own view (Redis could not be written, `local` mode),
    /// remembered so that it settles there.
    fn record_local(&self, task: &TaskKey<'_>, action: &Action<'_>, span: SpanRef) -> Recorded {
        let recorded = self.local.ledger.record_linked(task, action, span);
        self.local_entries.insert(task, recorded.seq);
        recorded
    }

    /// How long a task's keys live after their last refresh: the task's TTL plus
    /// [`Shared::refresh_every`], since *append* refreshes them at most that often.
    fn task_keep(&self) -> Duration {
        self.task_ttl() + Self::refresh_every(self.task_ttl())
    }

    /// How long a task is kept after its last use: its chain's idle TTL, or longer while its
    /// labels count for its agent.
    fn task_ttl(&self) -> Duration {
        self.idle_ttl.max(self.agent_label_ttl)
    }

    /// How often an append refreshes the task's key expiries and its place in the pool: at
    /// most once a second, and often enough to keep a short TTL close.
    fn refresh_every(ttl: Duration) -> Duration {
        (ttl / 16).min(Duration::from_secs(1))
    }

    fn refresh_ms(&self) -> u64 {
        dur_ms(Self::refresh_every(self.task_ttl()))
    }

    fn take_local(&self, task: &TaskKey<'_>, seq: u64) -> bool {
        self.local_entries.take(task, seq)
    }

    fn take_deferred(&self, task: &TaskKey<'_>, seq: u64) -> bool {
        self.deferred.take(task, seq)
    }
}

/// Entries of tasks, by (pool, task, seq), remembered until taken; beyond
/// [`MAX_LOCAL_ENTRIES`] the set starts over.
#[derive(Debug, Default)]
struct EntrySet(Mutex<HashSet<(bool, String, u64)>>);

impl EntrySet {
    fn insert(&self, task: &TaskKey<'_>, seq: u64) {
        if let Ok(mut set) = self.0.lock() {
            if set.len() >= MAX_LOCAL_ENTRIES {
                set.clear();
            }
            set.insert((task.verified, task.id.to_string(), seq));
        }
    }

    fn take(&self, task: &TaskKey<'_>, seq: u64) -> bool {
        self.0
            .lock()
            .map(|mut set| set.remove(&(task.verified, task.id.to_string(), seq)))
            .unwrap_or(false)
    }
}

impl RedisStore {
    /// One observe, appending `reserve` when given; [`Fail::Missing`] when an element names an
    /// entry this sidecar no longer holds (with what was appended).
    async fn observe_with(
        &self,
        task: &TaskKey<'_>,
        agent: &str,
        now: SystemTime,
        use_held: bool,
        reserve: Option<&Reserve<'_>>,
    ) -> Result<Observed, Fail> {
        let s = &self.shared;
        let held = if use_held {
            s.entries.held(task)
        } else {
            entries::Held::default()
        };
        let mut conn = s.conn();
        let mut call = s.scripts.observe.prepare_invoke();
        call.key(s.task_key("tm", task))
            .key(s.task_key("tc", task))
            .key(s.task_key("tl", task))
            .key(s.key(&["al:", agent]))
            .key(s.key(&["rv:task"]))
            .key(s.key(&["rv:agent"]))
            .key(s.key(&["epoch"]))
            .key(s.key(&["tomb:", pool(task)]))
            .key(s.key(&["te"]))
            .arg(task.id)
            .arg(agent)
            .arg(ms(now))
            .arg(dur_ms(s.idle_ttl))
            .arg(task.began.map(|b| ms(b).to_string()).unwrap_or_default())
            .arg(&held.born)
            .arg(held.from)
            .arg(held.to)
            .arg(held.unsettled);
        // The entry to append, built once: written as JSON, held as it is.
        let own = reserve.map(|r| chain::entry_value(&r.action, 0));
        if let (Some(r), Some(own)) = (reserve, &own) {
            let entry = serde_json::to_string(own).unwrap_or_default();
            call.key(s.key(&["tasks:", pool(task)]))
                .arg(entry)
                .arg(span_text(r.span))
                .arg(dur_ms(s.task_keep()))
                .arg(s.max_actions)
                .arg(s.settings.max_tasks)
                .arg(&s.prefix)
                .arg(pool(task))
                .arg(s.refresh_ms());
        }
        let reply: Vec<Reply> = match s
            .run(
                Op::Observe,
                s.settings.timeout,
                call.invoke_async(&mut conn),
            )
            .await
        {
            Ok(r) => r,
            Err(e) if s.local_mode() => {
                tracing::warn!(target: "toolgate::state", task = task.id, "deciding on the local view: {e}");
                return s.observe_local(task, agent, now).map_err(Fail::Down);
            }
            Err(e) => return Err(Fail::Down(e)),
        };
        let note = Some(Note {
            backend: "redis",
            degraded: false,
        });
        let mut parts = reply.into_iter();
        let revoked: i64 = parts
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or(1);
        if revoked == 2 {
            s.metrics.error(Op::Observe);
            if s.local_mode() {
                return s.observe_local(task, agent, now).map_err(Fail::Down);
            }
            return Err(Fail::Down(Unavailable::new(
                "toolgate's shared state (Redis) holds no toolgate data: it restarted without persistence or was flushed. Revocations are being written back from the replicas' copies; requests are refused until then (a fraction of a second)",
            )));
        }
        if revoked == 3 {
            let held: String = parts
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            // An end that does not parse still ends the task: fail closed.
            let ended = self::tasks::ended_of(&held).map_or_else(
                || EndedTask {
                    id: task.id.to_string(),
                    at: String::new(),
                    by: String::new(),
                    reason: None,
                    until: String::new(),
                },
                |(_, t)| t,
            );
            return Ok(Observed {
                revoked: false,
                ended: Some(Box::new(ended)),
                view: View::of_chain(Value::from(Vec::new())),
                note,
                reserved: None,
            });
        }
        if revoked != 0 {
            return Ok(Observed {
                revoked: true,
                ended: None,
                view: View::of_chain(Value::from(Vec::new())),
                note,
                reserved: None,
            });
        }
        let complete: i64 = parts
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or(0);
        let mut next = || -> Vec<String> {
            parts
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default()
        };
        let elements = next();
        let task_labels = next();
        let agent_labels = next();
        let mut text = || -> String {
            parts
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default()
        };
        let born = text();
        let span = text().parse().ok().zip(text().parse().ok());
        let seq = text().parse().ok().filter(|&n: &u64| n > 0);
        let reserved = seq.map(|seq| Recorded {
            seq,
            previous: span_of(&text()),
        });
        let own_born = text();
        let (chain, expected) = s
            .entries
            .chain(task, &born, span, &elements)
            .map_err(|_| Fail::Missing(reserved))?;
        // The entry just appended is held as built, never decoded back from its JSON.
        if let (Some(own), Some(res)) = (own, reserved) {
            if own_born == born {
                s.entries.own(task, &born, res.seq, with_seq(own, res.seq));
            }
        }
        let complete = complete == 1 && chain.len() == expected;
        Ok(Observed {
            revoked: false,
            ended: None,
            view: View {
                chain: Value::from(chain),
                task_labels: label_set(pairs(task_labels), None).to_value(),
                agent_labels: label_set(pairs(agent_labels), Some((s.agent_label_ttl, now)))
                    .to_value(),
                history_complete: complete,
            },
            note,
            reserved,
        })
    }

    /// [`StateStore::record`] for an entry observe appended (`reserved`): a plain allow is
    /// written with its outcome (no round trip now); any other decision, or one that sets
    /// labels, is written now — before the request goes out.
    async fn decided(
        &self,
        task: &TaskKey<'_>,
        action: &Action<'_>,
        span: SpanRef,
        reserved: Recorded,
    ) -> Result<Recorded, Unavailable> {
        let s = &self.shared;
        if action.decision == "allow" && !action.dry_run && action.labels.is_empty() {
            s.deferred.insert(task, reserved.seq);
            return Ok(reserved);
        }
        let mark = format!("{}\t{}", ms(action.at), chain::cut(action.action));
        let mut conn = s.conn();
        let mut call = s.scripts.decided.prepare_invoke();
        call.key(s.task_key("tc", task))
            .key(s.task_key("tl", task))
            .key(s.key(&["al:", action.agent]))
            .arg(reserved.seq)
            .arg(decision_prefix(action.decision, action.dry_run))
            .arg(ms(SystemTime::now()))
            .arg(dur_ms(s.task_keep()))
            .arg(dur_ms(s.agent_label_ttl))
            .arg(mark)
            .arg(MAX_LABELS);
        for label in action.labels {
            call.arg(&**label);
        }
        match s
            .run(
                Op::Record,
                s.settings.timeout,
                call.invoke_async::<i64>(&mut conn),
            )
            .await
        {
            Ok(_) => Ok(reserved),
            // The entry stays in the shared chain, pending and undecided (a rule sees it in
            // flight); this sidecar decides on its own view from here.
            Err(_) if s.local_mode() => Ok(s.record_local(task, action, span)),
            Err(e) => Err(e),
        }
    }
}

/// Why [`RedisStore::observe_with`] did not observe.
enum Fail {
    Down(Unavailable),
    /// The chain named an entry this sidecar no longer holds; what was appended, if anything.
    Missing(Option<Recorded>),
}

#[async_trait]
impl StateStore for RedisStore {
    async fn default_task(&self, agent: &str, idle_ttl: Duration) -> String {
        let s = &self.shared;
        // Redis is asked at most once per refresh period (a quarter of idle_ttl, at most a
        // second) — which keeps its expiry alive while the agent is active — not per request.
        let refresh = (idle_ttl / 4).min(Duration::from_secs(1));
        let cached = s.default_task.lock().ok().and_then(|c| {
            c.as_ref()
                .filter(|(a, _, at)| a == agent && at.elapsed() < refresh)
                .map(|(_, n, _)| *n)
        });
        if let Some(n) = cached {
            return format!("{}-{n}", crate::identify::DEFAULT_TASK);
        }
        let mut conn = s.conn();
        let mut call = s.scripts.default_task.prepare_invoke();
        call.key(s.key(&["dt:", agent]))
            .key(s.key(&["dtn:", agent]))
            .arg(dur_ms(idle_ttl));
        match s
            .run(
                Op::DefaultTask,
                s.settings.timeout,
                call.invoke_async::<u64>(&mut conn),
            )
            .await
        {
            Ok(n) => {
                if let Ok(mut c) = s.default_task.lock() {
                    *c = Some((agent.to_string(), n, Instant::now()));
                }
                format!("{}-{n}", crate::identify::DEFAULT_TASK)
            }
            // Unreachable: the last number known, else this process's own default task (the
            // request is refused in `deny` mode anyway, when its state is read).
            Err(_) => match s.default_task.lock().ok().and_then(|c| c.clone()) {
                Some((a, n, _)) if a == agent => format!("{}-{n}", crate::identify::DEFAULT_TASK),
                _ => s.local.default_task(agent, idle_ttl).await,
            },
        }
    }

    async fn observe(
        &self,
        task: &TaskKey<'_>,
        agent: &str,
        now: SystemTime,
        reserve: Option<&Reserve<'_>>,
    ) -> Result<Observed, Unavailable> {
        match self.observe_with(task, agent, now, true, reserve).await {
            Ok(o) => Ok(o),
            Err(Fail::Down(e)) => Err(e),
            // An element named an entry no longer held (another decision of the task
            // restarted the cache meanwhile): read the chain again, in full, keeping the entry
            // the first read appended.
            Err(Fail::Missing(reserved)) => {
                self.shared.entries.forget(task);
                match self.observe_with(task, agent, now, false, None).await {
                    Ok(mut o) => {
                        // The read comes after the append: the decision's own entry is not
                        // part of what it decides on.
                        if let (Some(r), Ok(entries)) = (reserved, o.view.chain.as_array()) {
                            let seq = Value::from(r.seq);
                            let others: Vec<Value> = entries
                                .iter()
                                .filter(|e| e["seq"] != seq)
                                .cloned()
                                .collect();
                            o.view.chain = Value::from(others);
                        }
                        Ok(Observed { reserved, ..o })
                    }
                    Err(Fail::Down(e)) => Err(e),
                    Err(Fail::Missing(_)) => Err(Unavailable::new(
                        "toolgate's shared state (Redis) answered a chain that cannot be read",
                    )),
                }
            }
        }
    }

    async fn record(
        &self,
        task: &TaskKey<'_>,
        action: &Action<'_>,
        span: SpanRef,
        reserved: Option<Recorded>,
    ) -> Result<Recorded, Unavailable> {
        let s = &self.shared;
        if let Some(r) = reserved {
            return self.decided(task, action, span, r).await;
        }
        let entry = serde_json::to_string(&chain::entry_value(action, 0)).unwrap_or_default();
        let mark = format!("{}\t{}", ms(action.at), chain::cut(action.action));
        let task_keep = s.task_keep();
        let mut conn = s.conn();
        let mut call = s.scripts.record.prepare_invoke();
        call.key(s.task_key("tm", task))
            .key(s.task_key("tc", task))
            .key(s.task_key("tl", task))
            .key(s.key(&["al:", action.agent]))
            .key(s.key(&["tasks:", pool(task)]))
            .key(s.key(&["tomb:", pool(task)]))
            .key(s.key(&["epoch"]))
            .arg(task.id)
            .arg(ms(SystemTime::now()))
            .arg(dur_ms(s.idle_ttl))
            .arg(dur_ms(task_keep))
            .arg(s.max_actions)
            .arg(s.settings.max_tasks)
            .arg(entry)
            .arg(span_text(span))
            .arg(task.began.map(|b| ms(b).to_string()).unwrap_or_default())
            .arg(dur_ms(s.agent_label_ttl))
            .arg(mark)
            .arg(MAX_LABELS)
            .arg(&s.prefix)
            .arg(pool(task))
            .arg(s.refresh_ms());
        for label in action.labels {
            call.arg(&**label);
        }
        match s
            .run(
                Op::Record,
                s.settings.timeout,
                call.invoke_async::<(u64, String)>(&mut conn),
            )
            .await
        {
            Ok((seq, previous)) => Ok(Recorded {
                seq,
                previous: span_of(&previous),
            }),
            Err(_) if s.local_mode() => Ok(s.record_local(task, action, span)),
            Err(e) => Err(e),
        }
    }

    async fn settle(&self, task: &TaskKey<'_>, seqs: &[u64], outcome: Outcome) {
        let s = &self.shared;
        let mut remote = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if s.take_local(task, *seq) {
                s.local.ledger.settle(task, *seq, outcome);
            } else {
                remote.push(*seq);
            }
        }
        if remote.is_empty() {
            return;
        }
        let mut conn = s.conn();
        let mut call = s.scripts.settle.prepare_invoke();
        let outcome_text = outcome_text(outcome);
        call.key(s.task_key("tc", task)).arg(&outcome_text);
        for seq in &remote {
            // A plain allow appended by observe is written with its decision now.
            let text = if s.take_deferred(task, *seq) {
                format!("allow|{outcome_text}")
            } else {
                outcome_text.clone()
            };
            call.arg(*seq).arg(text);
        }
        if let Err(e) = s
            .run(
                Op::Settle,
                s.settings.timeout,
                call.invoke_async::<i64>(&mut conn),
            )
            .await
        {
            tracing::error!(target: "toolgate::state", task = task.id, ?remote, outcome = outcome.as_str(), "outcome not written; the entry stays pending in the shared chain: {e}");
        }
    }

    async fn revoke(&self, r: &Revocation, now: SystemTime) -> Result<Added, RevokeFailure> {
        let s = &self.shared;
        let now_d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let end = now_d.checked_add(r.ttl).ok_or(Refused::Overflow)?;
        let expires = end
            .as_secs()
            .checked_add(u64::from(end.subsec_nanos() > 0))
            .ok_or(Refused::Overflow)?;
        let (status, kept) = s.revoke_until(r.kind, &r.id, expires, now).await?;
        if status < 0 {
            return Err(Refused::Full {
                kind: r.kind,
                capacity: CAPACITY,
            }
            .into());
        }
        // Copied at once too: this replica refuses it even if Redis goes away right now.
        let _ = s.copy_revocations(now).await;
        Ok(Added {
            entry: Entry {
                kind: r.kind,
                id: r.id.clone(),
                expires: rfc3339(kept),
            },
            changed: status == 1,
        })
    }

    async fn revocations(&self, now: SystemTime) -> Result<Vec<Entry>, Unavailable> {
        self.shared.list_revocations(now).await
    }

    async fn is_revoked(&self, kind: Kind, id: &str, now: SystemTime) -> Result<bool, Unavailable> {
        self.shared.is_revoked(kind, id, now).await
    }

    async fn end(
        &self,
        end: End,
        bounds: EndBounds,
        now: SystemTime,
    ) -> Result<Stored<Ending>, EndFailure> {
        self.shared.end(end, bounds, now).await
    }

    async fn ended(&self, id: &str, now: SystemTime) -> Result<Option<EndedView>, Unavailable> {
        self.shared.ended(id, now).await
    }

    async fn ended_tasks(&self, now: SystemTime) -> Result<Vec<EndedTask>, Unavailable> {
        self.shared.ended_tasks(now).await
    }

    fn issued(&self, task: &str, credential: Issued, now: SystemTime) {
        self.shared.local.issued(task, credential, now);
    }

    fn issued_for(
        &self,
        tasks: &[&str],
        agents: &[&str],
        now: SystemTime,
    ) -> (Vec<(String, Issued)>, bool) {
        self.shared.local.issued_for(tasks, agents, now)
    }

    async fn task(&self, id: &str) -> Result<Json, Unavailable> {
        let s = &self.shared;
        let mut out = serde_json::Map::new();
        let now = ms(SystemTime::now());
        for (verified, name) in [(true, "verified"), (false, "named")] {
            let key = TaskKey {
                id,
                verified,
                began: None,
            };
            let mut conn = s.conn();
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(s.task_key("tm", &key))
                .arg("last")
                .arg("inc")
                .lrange(s.task_key("tc", &key), 0, -1)
                .hgetall(s.task_key("tl", &key));
            let read = pipe.query_async::<(
                (Option<u64>, Option<String>),
                Vec<String>,
                Vec<(String, String)>,
            )>(&mut conn);
            let ((last, inc), elements, labels) = s
                .run(Op::Operator, s.settings.timeout.max(OPERATOR_TIMEOUT), read)
                .await?;
            let Some(last) = last else { continue };
            let idle = now.saturating_sub(last) >= dur_ms(s.idle_ttl);
            let chain: Vec<Json> = elements
                .iter()
                .filter_map(|e| entry_of(e))
                .map(|v| serde_json::to_value(v).unwrap_or_default())
                .collect();
            out.insert(
                name.to_string(),
                json!({
                    "chain": chain,
                    "labels": label_set(labels, None).to_json(),
                    "history_complete": inc.as_deref() != Some("1") && !idle,
                }),
            );
        }
        Ok(Json::Object(out))
    }

    async fn stats(&self) -> Result<Stats, Unavailable> {
        let s = &self.shared;
        let mut conn = s.conn();
        let mut pipe = redis::pipe();
        pipe.zcard(s.key(&["tasks:n"])).zcard(s.key(&["tasks:v"]));
        let read = pipe.query_async::<(usize, usize)>(&mut conn);
        let (named, verified) = s
            .run(Op::Operator, s.settings.timeout.max(OPERATOR_TIMEOUT), read)
            .await?;
        // Entries are not counted across the shared store (that would scan every task).
        Ok(Stats {
            tasks: named + verified,
            entries: 0,
        })
    }

    fn any_approved(&self) -> bool {
        // The hint from the last check; a retry that arrives before this replica heard of
        // its approval meets it when it is held, and is decided again with it.
        self.shared.approved.load(Ordering::Acquire) > 0
    }

    async fn approved_head(&self, head: &Digest) -> Result<bool, Unavailable> {
        approvals::approved_head(&self.shared, head).await
    }

    async fn approved(
        &self,
        digest: &Digest,
        now: SystemTime,
    ) -> Result<Option<Approval>, Unavailable> {
        approvals::approved(&self.shared, digest, now).await
    }

    async fn consume(
        &self,
        id: &str,
        decision_id: &str,
        now: SystemTime,
    ) -> Result<Stored<Option<Approval>>, Unavailable> {
        approvals::consume(&self.shared, id, decision_id, now).await
    }

    async fn hold(
        &self,
        new: NewApproval,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Held>, ApprovalFailure> {
        approvals::hold(&self.shared, new, bounds, now).await
    }

    async fn decide(
        &self,
        id: &str,
        approve: bool,
        verdict: &Verdict,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Approval>, ApprovalFailure> {
        approvals::decide(&self.shared, id, approve, verdict, bounds, now).await
    }

    async fn approval(
        &self,
        id: &str,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Option<Approval>, Unavailable> {
        Ok(approvals::read(&self.shared, Some(id), bounds, now)
            .await?
            .into_iter()
            .next())
    }

    async fn approvals(
        &self,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Vec<Approval>, Unavailable> {
        approvals::read(&self.shared, None, bounds, now).await
    }

    fn take_events(&self) -> Vec<Event> {
        self.shared
            .events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    fn approvals_changed(&self) -> u64 {
        self.shared.approvals_version.load(Ordering::Acquire)
    }

    fn health(&self) -> Health {
        let s = &self.shared;
        let available = s.available.load(Ordering::Acquire);
        Health {
            backend: "redis",
            available,
            serves_degraded: s.local_mode(),
            problem: if available {
                None
            } else {
                s.problem.lock().ok().and_then(|p| p.clone())
            },
        }
    }

    fn render_metrics(&self, out: &mut String) {
        let s = &self.shared;
        s.metrics
            .render(out, "redis", s.available.load(Ordering::Acquire));
    }
}
