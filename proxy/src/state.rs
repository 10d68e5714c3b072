//! The state backend (DESIGN.md §12): everything a decision depends on beyond the request —
//! the task's chain and labels, the agent's labels, revocations, approvals, the default task —
//! behind one trait, [`StateStore`], chosen once at start (`state.backend`) and never branched
//! on in a stage.
//!
//! - `memory` ([`memory::MemoryStore`]): this process, as the policy crate keeps it (the chain
//!   ledger, the revocations and approvals in `state.dir`). Never unavailable unless a lock was
//!   poisoned.
//! - `redis` ([`redis::RedisStore`]): shared by every toolgate pointed at the same Redis and
//!   prefix, so a task that spans pods has one chain. Its module opens with its keys, bounds
//!   and what happens when Redis is slow or gone.
//!
//! On the request path a decision costs the store three calls: [`StateStore::observe`] before
//! policy (revocations, the chain, the labels — one round trip to Redis, which also appends
//! the decision's own entry, pending and undecided), [`StateStore::record`] after it (the
//! pending entry with its decision and the labels it sets, before the request goes out; with
//! Redis no round trip for a plain allow, whose entry observe appended) and
//! [`StateStore::settle`] when the outcome is known (before the agent can read the answer;
//! with Redis it writes a plain allow's decision too). Each is awaited, so the next decision
//! in the task — behind any toolgate — sees it.
//!
//! One more kind of record (a task's end, say) is one more method here, with its memory
//! implementation delegating to the policy crate and its Redis one a key and a script.

pub mod memory;
pub mod redis;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::Value as Json;
use toolgate_policy::approval::{Digest, Verdict};
use toolgate_policy::chain::{Action, Outcome, Recorded, SpanRef, Stats, TaskKey, View};
use toolgate_policy::state::approvals::Full;
use toolgate_policy::state::{
    Added, Approval, ApprovalError, Bounds, End, EndBounds, EndError, EndedTask, EndedView, Ending,
    Entry, Event, Held, Issued, Kind, NewApproval, Refused, Revocation, RevokeError,
    StateUnavailable, Status, Stored,
};

/// The state could not be read or written: the request it was needed for is refused (503
/// `state-unavailable`), or, with `state.on_unavailable: local`, decided on this instance's
/// own view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unavailable {
    pub reason: Arc<str>,
}

impl Unavailable {
    /// Unavailable because of `reason` (says what failed and what to do).
    pub fn new(reason: impl Into<Arc<str>>) -> Unavailable {
        Unavailable {
            reason: reason.into(),
        }
    }
}

impl From<StateUnavailable> for Unavailable {
    fn from(e: StateUnavailable) -> Unavailable {
        Unavailable::new(e.to_string())
    }
}

/// What a decision reads from state before policy runs.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The task or the agent is revoked (refused before policy).
    pub revoked: bool,
    /// The task ended and its retention has not passed (refused before policy, `task-ended`).
    pub ended: Option<Box<EndedTask>>,
    /// The task's chain and labels, the agent's labels.
    pub view: View,
    /// `input.state` for a shared backend: `{"backend": "redis", "degraded": bool}`; `None`
    /// for the memory backend, whose input stays as it always was.
    pub note: Option<Note>,
    /// The decision's own entry, when the backend appended it with the read (given back to
    /// [`StateStore::record`]).
    pub reserved: Option<Recorded>,
}

/// What [`StateStore::observe`] may append for the decision about to be made: its entry,
/// `decision: "pending"`, and its span (a shared backend appends it in the same round trip).
#[derive(Debug)]
pub struct Reserve<'a> {
    pub action: Action<'a>,
    pub span: SpanRef,
}

/// `input.state`, when the backend is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    pub backend: &'static str,
    /// Decided on this instance's own view because the shared one was unreachable.
    pub degraded: bool,
}

impl Note {
    /// Set `input.state` on the input document.
    pub fn annotate(&self, input: &mut regorus::Value) {
        if let Ok(map) = input.as_object_mut() {
            let mut state = std::collections::BTreeMap::new();
            state.insert(
                regorus::Value::from("backend"),
                regorus::Value::from(self.backend),
            );
            state.insert(
                regorus::Value::from("degraded"),
                regorus::Value::from(self.degraded),
            );
            map.insert(regorus::Value::from("state"), regorus::Value::from(state));
        }
    }
}

/// Why an approval could not be held, decided or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalFailure {
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error(transparent)]
    Full(Full),
    #[error("no approval {0:?} is known (it never existed, or ended longer ago than approvals.retention)")]
    NotFound(String),
    /// Only a pending approval can be decided.
    #[error("approval {id} is {}, not pending: it cannot be decided again", .status.as_str())]
    NotPending { id: String, status: Status },
}

impl From<ApprovalError> for ApprovalFailure {
    fn from(e: ApprovalError) -> ApprovalFailure {
        match e {
            ApprovalError::Unavailable(u) => ApprovalFailure::Unavailable(u.into()),
            ApprovalError::Full(f) => ApprovalFailure::Full(f),
            ApprovalError::NotFound(id) => ApprovalFailure::NotFound(id),
            ApprovalError::NotPending { id, status } => ApprovalFailure::NotPending { id, status },
        }
    }
}

/// Why a revocation was not (fully) applied.
#[derive(Debug, thiserror::Error)]
pub enum RevokeFailure {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Applied and in force now, but not kept: lost on restart.
    #[error("{message}")]
    NotSaved { added: Added, message: String },
}

impl From<RevokeError> for RevokeFailure {
    fn from(e: RevokeError) -> RevokeFailure {
        let message = e.to_string();
        match e {
            RevokeError::Refused(r) => RevokeFailure::Refused(r),
            RevokeError::Unavailable(u) => RevokeFailure::Unavailable(u.into()),
            RevokeError::NotSaved { added, .. } => RevokeFailure::NotSaved { added, message },
        }
    }
}

/// Why a task could not be ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndFailure {
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Full or out of range (see [`EndError`]).
    #[error(transparent)]
    Refused(EndError),
}

impl From<EndError> for EndFailure {
    fn from(e: EndError) -> EndFailure {
        match e {
            EndError::Unavailable(u) => EndFailure::Unavailable(u.into()),
            other => EndFailure::Refused(other),
        }
    }
}

/// How the backend is doing, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// The backend answers.
    pub available: bool,
    /// Requests are decided anyway while it does not (`on_unavailable: local`).
    pub serves_degraded: bool,
    /// Why it does not answer, when it does not.
    pub problem: Option<String>,
}

impl Health {
    /// Whether `/readyz` answers 200: the backend answers, or requests are decided without it.
    pub fn ready(&self) -> bool {
        self.available || self.serves_degraded
    }

    /// What `/readyz` adds to its line: nothing for the memory backend.
    pub fn describe(&self) -> Option<String> {
        if self.backend == "memory" {
            return None;
        }
        let line = match (&self.problem, self.available) {
            (_, true) => format!("state {} available", self.backend),
            (Some(p), false) if self.serves_degraded => format!(
                "state {} unavailable, deciding on this instance's local view (degraded): {p}",
                self.backend
            ),
            (Some(p), false) => format!(
                "state {} unavailable, refusing requests (state.on_unavailable: deny): {p}",
                self.backend
            ),
            (None, false) => format!("state {} unavailable", self.backend),
        };
        Some(line)
    }
}

/// The state behind every decision: one implementation per backend, chosen at start.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    // The request path.

    /// The agent's default task now (`default-N`), rolling over after `idle_ttl` of the
    /// agent's inactivity — everywhere the store is shared.
    async fn default_task(&self, agent: &str, idle_ttl: Duration) -> String;

    /// Before policy: whether `task` or `agent` is revoked, and what the decision sees. A
    /// backend may append `reserve` to the chain in the same step (`Observed::reserved`).
    async fn observe(
        &self,
        task: &TaskKey<'_>,
        agent: &str,
        now: SystemTime,
        reserve: Option<&Reserve<'_>>,
    ) -> Result<Observed, Unavailable>;

    /// After policy: append `action` to the task's chain, pending, with its labels — or, when
    /// `observe` appended it (`reserved`), give it its decision and labels; returns its
    /// sequence number and the previous action's span.
    async fn record(
        &self,
        task: &TaskKey<'_>,
        action: &Action<'_>,
        span: SpanRef,
        reserved: Option<Recorded>,
    ) -> Result<Recorded, Unavailable>;

    /// Settle entries `seqs` of `task` on `outcome` (each settles once). A failure is counted
    /// and logged by the store: the entry stays pending, which a rule sees as in flight.
    async fn settle(&self, task: &TaskKey<'_>, seqs: &[u64], outcome: Outcome);

    // Revocations (operator API; decisions read them through `observe`).

    /// Apply `r` from `now` on (a revocation only lengthens).
    async fn revoke(&self, r: &Revocation, now: SystemTime) -> Result<Added, RevokeFailure>;

    /// Every revocation in force at `now`, sorted by kind and id.
    async fn revocations(&self, now: SystemTime) -> Result<Vec<Entry>, Unavailable>;

    /// Whether `id` of `kind` is revoked at `now` (introspection).
    async fn is_revoked(&self, kind: Kind, id: &str, now: SystemTime) -> Result<bool, Unavailable>;

    // The end of a task (`toolgate_policy::state::TaskStore`, asynchronously; decisions read
    // it through `observe`).

    /// End `end.task` (the first end stands); the unexpired credentials issued under it.
    async fn end(
        &self,
        end: End,
        bounds: EndBounds,
        now: SystemTime,
    ) -> Result<Stored<Ending>, EndFailure>;

    /// Task `id`'s end, if it ended and its retention has not passed at `now`.
    async fn ended(&self, id: &str, now: SystemTime) -> Result<Option<EndedView>, Unavailable>;

    /// Every ended task within its retention at `now`, sorted by id.
    async fn ended_tasks(&self, now: SystemTime) -> Result<Vec<EndedTask>, Unavailable>;

    /// Index a credential issued under `task` (this instance's index, see `TaskStore::issued`).
    fn issued(&self, task: &str, credential: Issued, now: SystemTime);

    /// The unexpired credentials this instance indexed under `tasks` or issued to `agents`,
    /// and whether a list was cut.
    fn issued_for(
        &self,
        tasks: &[&str],
        agents: &[&str],
        now: SystemTime,
    ) -> (Vec<(String, Issued)>, bool);

    // Tasks (operator API).

    /// Task `id` as operators see it: per pool (`named`, `verified`) its chain, labels and
    /// completeness.
    async fn task(&self, id: &str) -> Result<Json, Unavailable>;

    /// How many tasks and entries are held.
    async fn stats(&self) -> Result<Stats, Unavailable>;

    // Approvals (`toolgate_policy::state::ApprovalStore`, asynchronously).

    /// Whether any approval may be approved and unused: when not (almost always), no request
    /// computes its digest. Never waits; a shared backend may answer `true` needlessly.
    fn any_approved(&self) -> bool;

    /// Whether an approved approval has head digest `head`.
    async fn approved_head(&self, head: &Digest) -> Result<bool, Unavailable>;

    /// The approved, unused, unexpired approval bound to `digest`.
    async fn approved(
        &self,
        digest: &Digest,
        now: SystemTime,
    ) -> Result<Option<Approval>, Unavailable>;

    /// Use approval `id` for the request `decision_id` forwards, atomically everywhere;
    /// `None` when it is no longer approved.
    async fn consume(
        &self,
        id: &str,
        decision_id: &str,
        now: SystemTime,
    ) -> Result<Stored<Option<Approval>>, Unavailable>;

    /// Hold `new` for a human (see `ApprovalStore::hold`).
    async fn hold(
        &self,
        new: NewApproval,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Held>, ApprovalFailure>;

    /// Approve or deny pending approval `id`.
    async fn decide(
        &self,
        id: &str,
        approve: bool,
        verdict: &Verdict,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Approval>, ApprovalFailure>;

    /// Approval `id`, whatever its status, while it is kept.
    async fn approval(
        &self,
        id: &str,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Option<Approval>, Unavailable>;

    /// The approvals in force, oldest first.
    async fn approvals(
        &self,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Vec<Approval>, Unavailable>;

    /// The approval events this instance caused since the last call, oldest first.
    fn take_events(&self) -> Vec<Event>;

    /// Bumped whenever an approval may have changed anywhere (wakes held requests).
    fn approvals_changed(&self) -> u64 {
        0
    }

    // Health.

    /// How the backend is doing.
    fn health(&self) -> Health;

    /// Its metrics, in Prometheus text format.
    fn render_metrics(&self, out: &mut String);
}

/// Why the state backend could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    File(#[from] toolgate_policy::state::FileError),
    #[error(transparent)]
    Redis(#[from] redis::StartError),
}

/// Open the backend `config.state` chooses: the memory one restores `state.dir`; the Redis
/// one connects in the background (a Redis that is down at start makes toolgate unready in
/// `deny` mode, not fail).
pub fn open(
    config: &toolgate_policy::config::Config,
    now: SystemTime,
) -> Result<Box<dyn StateStore>, OpenError> {
    match &config.state.backend {
        toolgate_policy::config::StateBackend::Memory => {
            let state = toolgate_policy::state::State::open(&config.state, now)?;
            match state.path() {
                Some(path) => tracing::info!(file = %path.display(), revocations = state.revocations(now).map(|r| r.len()).unwrap_or(0), "operator state kept in a file"),
                None => tracing::warn!("state.dir is not set: revocations are kept in memory only and do not survive a restart"),
            }
            Ok(Box::new(memory::MemoryStore::new(&config.chain, state)))
        }
        toolgate_policy::config::StateBackend::Redis(settings) => {
            let store = redis::RedisStore::start(settings, &config.chain)?;
            tracing::info!(prefix = %settings.prefix, on_unavailable = settings.on_unavailable.as_str(), "state kept in redis, shared by every toolgate using it");
            Ok(Box::new(store))
        }
    }
}

/// The operations the store counts failures of (`toolgate_state_errors_total{op}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Observe,
    Record,
    Settle,
    DefaultTask,
    Operator,
    Approval,
    Sync,
}

impl Op {
    const ALL: [Op; 7] = [
        Op::Observe,
        Op::Record,
        Op::Settle,
        Op::DefaultTask,
        Op::Operator,
        Op::Approval,
        Op::Sync,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::Observe => "observe",
            Op::Record => "record",
            Op::Settle => "settle",
            Op::DefaultTask => "default_task",
            Op::Operator => "operator",
            Op::Approval => "approval",
            Op::Sync => "sync",
        }
    }

    fn index(self) -> usize {
        match self {
            Op::Observe => 0,
            Op::Record => 1,
            Op::Settle => 2,
            Op::DefaultTask => 3,
            Op::Operator => 4,
            Op::Approval => 5,
            Op::Sync => 6,
        }
    }
}

/// `toolgate_state_errors_total{op}`, `toolgate_state_degraded_total` and
/// `toolgate_state_available`.
#[derive(Debug, Default)]
pub struct StateMetrics {
    errors: [AtomicU64; 7],
    degraded: AtomicU64,
}

impl StateMetrics {
    /// One failed call of `op`.
    pub fn error(&self, op: Op) {
        if let Some(c) = self.errors.get(op.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One decision made on the local view because the shared one was unreachable.
    pub fn degraded(&self) {
        self.degraded.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed calls of `op` so far.
    pub fn errors(&self, op: Op) -> u64 {
        self.errors
            .get(op.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Append the metrics, with the backend's `available` gauge.
    pub fn render(&self, out: &mut String, backend: &str, available: bool) {
        out.push_str("# HELP toolgate_state_available Whether the state backend answers (1) or not (0).\n# TYPE toolgate_state_available gauge\n");
        let _ = writeln!(
            out,
            "toolgate_state_available{{backend=\"{backend}\"}} {}",
            u8::from(available)
        );
        out.push_str("# HELP toolgate_state_errors_total State backend calls that failed or timed out, by operation.\n# TYPE toolgate_state_errors_total counter\n");
        for op in Op::ALL {
            let _ = writeln!(
                out,
                "toolgate_state_errors_total{{op=\"{}\"}} {}",
                op.as_str(),
                self.errors(op)
            );
        }
        out.push_str("# HELP toolgate_state_degraded_total Decisions made on this instance's local view because the shared state was unavailable.\n# TYPE toolgate_state_degraded_total counter\n");
        let _ = writeln!(
            out,
            "toolgate_state_degraded_total {}",
            self.degraded.load(Ordering::Relaxed)
        );
    }
}
