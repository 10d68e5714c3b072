//! The chain ledger: per task, the agent's last actions, oldest first — what `input.chain`
//! shows policy, so a decision can depend on what the agent did just before in this task —
//! the task's sticky labels, and the agent's labels (`input.task.labels`,
//! `input.agent.labels`), which no window evicts.
//!
//! Every entry is recorded *pending* when its decision is made and settles on exactly one
//! [`Outcome`] — the tool's status, or why there is none — so an action in flight, or one the
//! agent hung up on, never looks like a success to a rule.
//!
//! The agent picks the task ids it sends, so the ledger keeps two pools: tasks an orchestrator
//! vouched for with a verified task token, and tasks the agent named itself. Each pool holds
//! `max_tasks` tasks, so naming thousands of tasks can only evict the agent's own unverified
//! ones. Tasks are placed in [`SHARDS`] independently locked shards by a hash keyed per
//! process, so an agent cannot aim task ids at one shard. A task whose history was cut — by
//! the window, by eviction, by going idle, or because it began before this process started —
//! says so (`input.task.history_complete: false`), so a rule can fail closed.
//!
//! Memory is bounded: at most `max_actions` entries per task, `max_tasks` tasks per pool
//! (least recently used evicted first, idle ones after `idle_ttl`), [`MAX_ATTRIBUTE_WEIGHT`]
//! estimated bytes of attributes per entry (heavier attributes are replaced by
//! `{"_truncated": true}`), names cut at [`MAX_NAME_BYTES`], [`labels::MAX_LABELS`] labels per
//! task, [`TOMBSTONES_PER_TASK`] remembered evictions per task slot, and the agent label
//! store's own bound. [`worst_case_bytes`] is the resulting bound, checked against a counting
//! allocator in `policy/tests/chain_memory.rs`. Entries are stored as ready-made policy values,
//! so building `input.chain` clones reference-counted values instead of allocating.

#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use regorus::Value;
use serde_json::Value as Json;

use crate::config::ChainSettings;
use crate::evaluate::{word, ChainEntry};
use crate::labels::{AgentLabels, LabelSet, Mark};

/// Number of independently locked shards per pool.
pub const SHARDS: usize = 16;
/// Estimated bytes of attributes one entry may hold (see [`attribute_weight`]).
pub const MAX_ATTRIBUTE_WEIGHT: usize = 1024;
/// Longest action, tool or agent name kept in an entry; longer names are cut at a char
/// boundary.
pub const MAX_NAME_BYTES: usize = 128;
/// Fixed estimated heap of one entry besides its attributes: the entry object, its fields,
/// the timestamp string and the ledger's bookkeeping.
pub const ENTRY_OVERHEAD: usize = 1024;
/// Fixed estimated heap of one task besides its entries: its id (≤ 128 bytes, as `identify`
/// enforces), its map slot, ring buffer header and label set.
pub const TASK_OVERHEAD: usize = 1024;
/// Evicted tasks remembered per task slot, so a task that comes back says its history is
/// incomplete. Each is 8 bytes (a keyed hash of the id) plus set overhead.
pub const TOMBSTONES_PER_TASK: usize = 4;
/// Estimated heap of one stored task label.
const LABEL_BYTES: usize = 640;

/// The most heap a ledger bounded by `settings` can hold: both pools full, every task full,
/// every entry at its attribute budget, every label set full, plus the agent label store.
pub fn worst_case_bytes(settings: &ChainSettings) -> usize {
    let max_actions = settings.max_actions.max(1);
    let ring = max_actions.next_power_of_two() * std::mem::size_of::<(u64, Value)>();
    let labels = (crate::labels::MAX_LABELS + 1) * LABEL_BYTES;
    let per_task = TASK_OVERHEAD
        + ring
        + labels
        + TOMBSTONES_PER_TASK * 48
        + max_actions * (ENTRY_OVERHEAD + MAX_ATTRIBUTE_WEIGHT + 3 * MAX_NAME_BYTES);
    2 * settings.max_tasks.max(1) * per_task + AgentLabels::worst_case_bytes()
}

/// Estimated heap of one attribute once held as a policy value: a fixed cost per node plus
/// its text. Pessimistic on purpose — a JSON text length would undercount small numbers in
/// arrays about twelvefold.
pub fn attribute_weight(name: &str, value: &Json) -> usize {
    const NODE: usize = 64;
    fn weight(v: &Json) -> usize {
        match v {
            Json::Null | Json::Bool(_) | Json::Number(_) => NODE,
            Json::String(s) => NODE + s.len(),
            Json::Array(a) => NODE + a.iter().map(weight).sum::<usize>(),
            Json::Object(m) => {
                NODE + m
                    .iter()
                    .map(|(k, v)| 2 * NODE + k.len() + weight(v))
                    .sum::<usize>()
            }
        }
    }
    2 * NODE + name.len() + weight(value)
}

/// What the ledger holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub tasks: usize,
    pub entries: usize,
}

/// The identity of an action's span, kept per task so the next action's span links to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRef {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// What [`Ledger::record_linked`] assigned: the action's sequence number and the span of the
/// task's previous action (the one with `seq - 1`), if it recorded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub seq: u64,
    pub previous: Option<SpanRef>,
}

/// Which task an action belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskKey<'a> {
    pub id: &'a str,
    /// Named by a verified task token: the task lives in the verified pool, which tasks the
    /// agent names itself cannot evict.
    pub verified: bool,
    /// When the task began, if known (the task token's `iat`): a task that began before
    /// this process started has history this ledger never saw.
    pub began: Option<SystemTime>,
}

impl<'a> TaskKey<'a> {
    /// A task the agent named (header, traceparent, default task).
    pub fn named(id: &'a str) -> TaskKey<'a> {
        TaskKey {
            id,
            verified: false,
            began: None,
        }
    }
}

/// How an action ended: exactly one per chain entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The tool answered with this status.
    Response(u16),
    /// toolgate answered itself with this status (denied, refused, failed to forward…).
    Refused(u16),
    /// The agent went away before the tool's answer arrived.
    AgentDisconnected,
    /// The tool could not be reached or failed mid-answer.
    UpstreamError,
    /// The tool did not answer in time.
    Timeout,
}

impl Outcome {
    /// The `outcome` field policy sees.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Response(_) => "response",
            Outcome::Refused(_) => "refused",
            Outcome::AgentDisconnected => "agent_disconnected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
        }
    }

    /// The status that goes with it, if any.
    pub fn status(self) -> Option<u16> {
        match self {
            Outcome::Response(s) | Outcome::Refused(s) => Some(s),
            Outcome::AgentDisconnected | Outcome::UpstreamError | Outcome::Timeout => None,
        }
    }
}

/// What a decision sees of a task and its agent.
#[derive(Debug, Clone)]
pub struct View {
    /// `input.chain`: the task's recent actions, oldest first.
    pub chain: Value,
    /// `input.task.labels`.
    pub task_labels: Value,
    /// `input.agent.labels`.
    pub agent_labels: Value,
    /// `input.task.history_complete`.
    pub history_complete: bool,
}

#[derive(Debug)]
struct Task {
    entries: VecDeque<(u64, Value)>,
    next_seq: u64,
    /// The span of the last recorded action.
    last_span: Option<SpanRef>,
    last_used: Instant,
    /// Shard-local use counter: the smallest is the least recently used.
    touched: u64,
    labels: LabelSet,
    /// Nothing of this task's history has been cut.
    complete: bool,
}

#[derive(Debug, Default)]
struct Shard {
    tasks: HashMap<Arc<str>, Task>,
    clock: u64,
    /// Keyed hashes of evicted task ids, oldest first.
    tombstones: VecDeque<u64>,
    buried: HashSet<u64>,
}

#[derive(Debug)]
struct Pool {
    shards: Vec<Mutex<Shard>>,
    tasks_per_shard: usize,
}

/// Per-task history of actions and labels, and per-agent labels, bounded in tasks, entries,
/// labels and bytes.
#[derive(Debug)]
pub struct Ledger {
    /// Tasks the agent named.
    named: Pool,
    /// Tasks a verified task token named.
    verified: Pool,
    /// Keyed per process: placement and tombstones the agent cannot predict.
    keys: RandomState,
    max_actions: usize,
    idle_ttl: Duration,
    /// When this ledger started: tasks that began earlier have history it never saw.
    started: SystemTime,
    agents: AgentLabels,
}

/// One action to append to a task's history.
#[derive(Debug, Clone)]
pub struct Action<'a> {
    pub action: &'a str,
    pub tool: Option<&'a str>,
    /// The agent that took it.
    pub agent: &'a str,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// Set when the decision was a would-deny forwarded in dry-run mode.
    pub dry_run: bool,
    pub attributes: &'a [(Arc<str>, Json)],
    /// Labels this action sets on its task and its agent.
    pub labels: &'a [Arc<str>],
    pub at: SystemTime,
}

impl Pool {
    fn new(settings: &ChainSettings) -> Pool {
        // Never more tasks than max_tasks in total: fewer shards for tiny caps, and each
        // shard's share rounded down.
        let shards = SHARDS.min(settings.max_tasks.max(1));
        Pool {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            tasks_per_shard: (settings.max_tasks / shards).max(1),
        }
    }
}

impl Ledger {
    /// A ledger bounded by `settings` (`max_actions`, `max_tasks`, `idle_ttl`,
    /// `agent_label_ttl`).
    pub fn new(settings: &ChainSettings) -> Ledger {
        Ledger {
            named: Pool::new(settings),
            verified: Pool::new(settings),
            keys: RandomState::new(),
            max_actions: settings.max_actions.max(1),
            idle_ttl: settings.idle_ttl,
            started: SystemTime::now(),
            agents: AgentLabels::new(settings.agent_label_ttl),
        }
    }

    fn pool(&self, task: &TaskKey<'_>) -> &Pool {
        if task.verified {
            &self.verified
        } else {
            &self.named
        }
    }

    fn shard(&self, task: &TaskKey<'_>) -> Option<(std::sync::MutexGuard<'_, Shard>, u64)> {
        let pool = self.pool(task);
        let hash = self.keys.hash_one(task.id);
        let n = pool.shards.len().max(1) as u64;
        let i = usize::try_from(hash % n).unwrap_or(0);
        pool.shards
            .get(i)
            .and_then(|m| m.lock().ok())
            .map(|s| (s, hash))
    }

    fn tasks_per_shard(&self, task: &TaskKey<'_>) -> usize {
        self.pool(task).tasks_per_shard
    }

    /// What a decision on `task` by `agent` sees at `now`.
    pub fn view(&self, task: &TaskKey<'_>, agent: &str, now: SystemTime) -> View {
        let agent_labels = self.agents.view(agent, now);
        let clock = Instant::now();
        let Some((shard, hash)) = self.shard(task) else {
            // A poisoned shard cannot be read: the history is not complete.
            return View {
                chain: Value::from(Vec::new()),
                task_labels: Value::from(std::collections::BTreeMap::new()),
                agent_labels,
                history_complete: false,
            };
        };
        match shard.tasks.get(task.id) {
            Some(t) => {
                let idle = clock.duration_since(t.last_used) >= self.idle_ttl;
                let chain = if idle {
                    Value::from(Vec::new())
                } else {
                    Value::from(t.entries.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>())
                };
                View {
                    chain,
                    task_labels: t.labels.to_value(),
                    agent_labels,
                    history_complete: t.complete && !idle,
                }
            }
            None => View {
                chain: Value::from(Vec::new()),
                task_labels: Value::from(std::collections::BTreeMap::new()),
                agent_labels,
                history_complete: !shard.buried.contains(&hash) && !self.began_before(task),
            },
        }
    }

    fn began_before(&self, task: &TaskKey<'_>) -> bool {
        // Tokens are issued a little before they are used: a minute of allowance.
        task.began
            .is_some_and(|b| b + Duration::from_secs(60) < self.started)
    }

    /// The task's history as `input.chain` (oldest first); empty for an unknown task.
    pub fn history(&self, task: &TaskKey<'_>) -> Value {
        self.view(task, "", SystemTime::now()).chain
    }

    /// Append a pending action to `task`'s history and set its labels on the task and its
    /// agent; returns its sequence number (1, 2, …).
    pub fn record(&self, task: &TaskKey<'_>, action: &Action<'_>) -> u64 {
        self.append(task, action, None).seq
    }

    /// [`Ledger::record`] for an action whose span is `span`; returns its sequence number and
    /// the previous action's span, assigned together so concurrent actions of one task link
    /// in seq order.
    pub fn record_linked(
        &self,
        task: &TaskKey<'_>,
        action: &Action<'_>,
        span: SpanRef,
    ) -> Recorded {
        self.append(task, action, Some(span))
    }

    fn append(&self, task: &TaskKey<'_>, action: &Action<'_>, span: Option<SpanRef>) -> Recorded {
        let mark = Mark {
            by: Arc::from(cut(action.action)),
            at: action.at,
        };
        self.agents.set(action.agent, action.labels, &mark);
        let now = Instant::now();
        let Some((mut shard, hash)) = self.shard(task) else {
            return Recorded {
                seq: 0,
                previous: None,
            };
        };
        shard.clock += 1;
        let clock = shard.clock;
        if !shard.tasks.contains_key(task.id) {
            self.make_room(&mut shard, now, self.tasks_per_shard(task));
        }
        let fresh_complete = !shard.buried.contains(&hash) && !self.began_before(task);
        let idle_ttl = self.idle_ttl;
        let entry = shard
            .tasks
            .entry(Arc::from(task.id))
            .or_insert_with(|| Task {
                entries: VecDeque::new(),
                next_seq: 1,
                last_span: None,
                last_used: now,
                touched: clock,
                labels: LabelSet::default(),
                complete: fresh_complete,
            });
        // A task idle past its TTL starts over: its history no longer describes this work
        // (its labels stay: what it touched, it touched).
        if now.duration_since(entry.last_used) >= idle_ttl {
            entry.entries.clear();
            entry.next_seq = 1;
            entry.last_span = None;
            entry.complete = false;
        }
        let seq = entry.next_seq;
        let previous = match span {
            Some(span) => entry.last_span.replace(span),
            None => entry.last_span.take(),
        };
        entry.next_seq += 1;
        entry.last_used = now;
        entry.touched = clock;
        for label in action.labels {
            entry.labels.set(label, &mark);
        }
        entry.entries.push_back((seq, entry_value(action, seq)));
        while entry.entries.len() > self.max_actions {
            entry.entries.pop_front();
            entry.complete = false;
        }
        Recorded { seq, previous }
    }

    /// Settle entry `seq` of `task` on `outcome`. An entry settles once: later outcomes for it
    /// are ignored, so the first true account (the tool's status as its answer arrives)
    /// stands.
    pub fn settle(&self, task: &TaskKey<'_>, seq: u64, outcome: Outcome) {
        let Some((mut shard, _)) = self.shard(task) else {
            return;
        };
        let Some(t) = shard.tasks.get_mut(task.id) else {
            return;
        };
        if let Some((_, value)) = t.entries.iter_mut().rev().find(|(s, _)| *s == seq) {
            if value[&word("pending")] != Value::from(true) {
                return;
            }
            let current = std::mem::replace(value, Value::Null);
            *value = settled(current, outcome);
        }
    }

    /// Current number of tasks and entries.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for shard in self.named.shards.iter().chain(&self.verified.shards) {
            if let Ok(s) = shard.lock() {
                stats.tasks += s.tasks.len();
                stats.entries += s.tasks.values().map(|t| t.entries.len()).sum::<usize>();
            }
        }
        stats
    }

    /// A task as operators see it: its chain, labels and completeness in each pool it is in.
    pub fn describe(&self, id: &str) -> Json {
        let mut out = serde_json::Map::new();
        for (verified, name) in [(true, "verified"), (false, "named")] {
            let key = TaskKey {
                id,
                verified,
                began: None,
            };
            let Some((shard, _)) = self.shard(&key) else {
                continue;
            };
            if let Some(t) = shard.tasks.get(id) {
                let chain: Vec<Json> = t
                    .entries
                    .iter()
                    .map(|(_, v)| serde_json::to_value(v).unwrap_or_default())
                    .collect();
                let idle = Instant::now().duration_since(t.last_used) >= self.idle_ttl;
                out.insert(
                    name.to_string(),
                    serde_json::json!({
                        "chain": chain,
                        "labels": t.labels.to_json(),
                        "history_complete": t.complete && !idle,
                    }),
                );
            }
        }
        Json::Object(out)
    }

    /// The labels in force on `agent`, as operators see them.
    pub fn agent_labels(&self, agent: &str) -> Json {
        self.agents.describe(agent, SystemTime::now())
    }

    /// Evict idle tasks, then the least recently used, until a new task fits; each evicted
    /// task is remembered (bounded), so if it comes back its history says it was cut.
    fn make_room(&self, shard: &mut Shard, now: Instant, cap: usize) {
        if shard.tasks.len() < cap {
            return;
        }
        let ttl = self.idle_ttl;
        let idle: Vec<Arc<str>> = shard
            .tasks
            .iter()
            .filter(|(_, t)| now.duration_since(t.last_used) >= ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for id in idle {
            self.evict(shard, &id, cap);
        }
        while shard.tasks.len() >= cap {
            let Some(oldest) = shard
                .tasks
                .iter()
                .min_by_key(|(_, t)| t.touched)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.evict(shard, &oldest, cap);
        }
    }

    fn evict(&self, shard: &mut Shard, id: &str, cap: usize) {
        if shard.tasks.remove(id).is_none() {
            return;
        }
        let hash = self.keys.hash_one(id);
        if shard.buried.insert(hash) {
            shard.tombstones.push_back(hash);
        }
        while shard.tombstones.len() > cap * TOMBSTONES_PER_TASK {
            if let Some(old) = shard.tombstones.pop_front() {
                shard.buried.remove(&old);
            }
        }
    }
}

/// Entry `seq` for `action` as it is stored and shown to policy, pending: names cut at
/// [`MAX_NAME_BYTES`], attributes within [`MAX_ATTRIBUTE_WEIGHT`], `dry_run` when set. Every
/// backend stores this value.
pub fn entry_value(action: &Action<'_>, seq: u64) -> Value {
    let value = ChainEntry {
        seq,
        action: Arc::from(cut(action.action)),
        tool: action.tool.map(|t| Arc::from(cut(t))),
        agent: Arc::from(cut(action.agent)),
        decision: action.decision,
        outcome: None,
        attributes: bounded(action.attributes),
        at: action.at,
    }
    .to_value();
    if action.dry_run {
        with_field(value, "dry_run", Value::from(true))
    } else {
        value
    }
}

/// `value`, an entry written before its decision (`decision: "pending"`, as a shared backend
/// appends it with the read), with its `decision` (`allow`, `deny` or `error`; anything else
/// leaves it as it is) and `dry_run` when set.
pub fn decided_value(value: Value, decision: &str, dry_run: bool) -> Value {
    let decision = match decision {
        "allow" => "allow",
        "deny" => "deny",
        "error" => "error",
        _ => return value,
    };
    let value = with_field(value, "decision", word(decision));
    if dry_run {
        with_field(value, "dry_run", Value::from(true))
    } else {
        value
    }
}

/// `value`, an entry, settled on `outcome` (what [`Ledger::settle`] does to a pending entry).
pub fn settled_value(value: Value, outcome: Outcome) -> Value {
    settled(value, outcome)
}

/// Attributes as stored: unchanged when within the weight budget, a marker when over it.
fn bounded(attributes: &[(Arc<str>, Json)]) -> Vec<(Arc<str>, Json)> {
    let weight: usize = attributes.iter().map(|(k, v)| attribute_weight(k, v)).sum();
    if weight <= MAX_ATTRIBUTE_WEIGHT {
        attributes.to_vec()
    } else {
        vec![(Arc::from("_truncated"), Json::Bool(true))]
    }
}

/// `s` cut to at most [`MAX_NAME_BYTES`] at a char boundary (how names are kept in entries
/// and label marks).
pub fn cut(s: &str) -> &str {
    let mut end = s.len().min(MAX_NAME_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// `value` (an object) with `key` set.
fn with_field(mut value: Value, key: &str, field: Value) -> Value {
    if let Ok(obj) = value.as_object_mut() {
        obj.insert(word(key), field);
    }
    value
}

/// A pending entry settled on `outcome`.
fn settled(value: Value, outcome: Outcome) -> Value {
    let value = with_field(value, "pending", Value::from(false));
    let value = with_field(value, "outcome", word(outcome.as_str()));
    match outcome.status() {
        Some(s) => with_field(value, "status", Value::from(u64::from(s))),
        None => value,
    }
}
