//! The chain ledger: per task, the agent's last actions, oldest first — what `input.chain`
//! shows policy, so a decision can depend on what the agent did just before in this task.
//!
//! Memory is bounded three ways: at most `max_actions` entries per task, at most `max_tasks`
//! tasks (least recently used evicted first, idle ones after `idle_ttl`), and at most
//! [`MAX_ATTRIBUTE_WEIGHT`] estimated bytes of attributes per entry (heavier attributes are
//! replaced by `{"_truncated": true}`); names are cut at [`MAX_NAME_BYTES`].
//! [`worst_case_bytes`] is the resulting bound, checked against a counting allocator in
//! `policy/tests/chain_memory.rs`. Entries are stored as ready-made policy values, so building
//! `input.chain` clones reference-counted values instead of allocating. Tasks are spread over
//! [`SHARDS`] independently locked shards so concurrent requests rarely wait on each other.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use regorus::Value;
use serde_json::Value as Json;

use crate::config::ChainSettings;
use crate::evaluate::ChainEntry;

/// Number of independently locked shards.
pub const SHARDS: usize = 16;
/// Estimated bytes of attributes one entry may hold (see [`attribute_weight`]).
pub const MAX_ATTRIBUTE_WEIGHT: usize = 1024;
/// Longest action or tool name kept in an entry; longer names are cut at a char boundary.
pub const MAX_NAME_BYTES: usize = 128;
/// Fixed estimated heap of one entry besides its attributes: the entry object, its fields,
/// the timestamp string and the ledger's bookkeeping.
pub const ENTRY_OVERHEAD: usize = 768;
/// Fixed estimated heap of one task besides its entries: its id (≤ 128 bytes, as `identify`
/// enforces), its map slot and ring buffer header.
pub const TASK_OVERHEAD: usize = 1024;

/// The most heap a ledger bounded by `settings` can hold: every task full, every entry at its
/// attribute budget.
pub fn worst_case_bytes(settings: &ChainSettings) -> usize {
    let max_actions = settings.max_actions.max(1);
    let ring = max_actions.next_power_of_two() * std::mem::size_of::<(u64, Value)>();
    let per_task = TASK_OVERHEAD
        + ring
        + max_actions * (ENTRY_OVERHEAD + MAX_ATTRIBUTE_WEIGHT + 2 * MAX_NAME_BYTES);
    settings.max_tasks.max(1) * per_task
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

#[derive(Debug)]
struct Task {
    entries: VecDeque<(u64, Value)>,
    next_seq: u64,
    /// The span of the last recorded action.
    last_span: Option<SpanRef>,
    last_used: Instant,
    /// Shard-local use counter: the smallest is the least recently used.
    touched: u64,
}

#[derive(Debug, Default)]
struct Shard {
    tasks: HashMap<Arc<str>, Task>,
    clock: u64,
}

/// Per-task history of actions, bounded in tasks, entries and bytes.
#[derive(Debug)]
pub struct Ledger {
    shards: Vec<Mutex<Shard>>,
    max_actions: usize,
    tasks_per_shard: usize,
    idle_ttl: Duration,
}

/// One action to append to a task's history.
#[derive(Debug, Clone)]
pub struct Action<'a> {
    pub action: &'a str,
    pub tool: Option<&'a str>,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// Set when the decision was a would-deny forwarded in dry-run mode.
    pub dry_run: bool,
    pub attributes: &'a [(Arc<str>, Json)],
    pub at: SystemTime,
}

fn shard_of(task: &str) -> usize {
    // FNV-1a; any stable spread will do.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % SHARDS as u64).unwrap_or(0)
}

impl Ledger {
    /// A ledger bounded by `settings` (`max_actions`, `max_tasks`, `idle_ttl`).
    pub fn new(settings: &ChainSettings) -> Ledger {
        // Never more tasks than max_tasks in total: fewer shards for tiny caps, and each
        // shard's share rounded down.
        let shards = SHARDS.min(settings.max_tasks.max(1));
        Ledger {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            max_actions: settings.max_actions.max(1),
            tasks_per_shard: (settings.max_tasks / shards).max(1),
            idle_ttl: settings.idle_ttl,
        }
    }

    fn shard(&self, task: &str) -> Option<std::sync::MutexGuard<'_, Shard>> {
        let i = shard_of(task) % self.shards.len().max(1);
        self.shards.get(i).and_then(|m| m.lock().ok())
    }

    /// The task's history as `input.chain` (oldest first); empty for an unknown task.
    pub fn history(&self, task: &str) -> Value {
        let now = Instant::now();
        let Some(shard) = self.shard(task) else {
            return Value::from(Vec::new());
        };
        match shard.tasks.get(task) {
            Some(t) if now.duration_since(t.last_used) < self.idle_ttl => {
                Value::from(t.entries.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>())
            }
            _ => Value::from(Vec::new()),
        }
    }

    /// Append an action to `task`'s history; returns its sequence number (1, 2, …).
    pub fn record(&self, task: &str, action: &Action<'_>) -> u64 {
        self.append(task, action, None).seq
    }

    /// Append an action whose span is `span`; returns its sequence number and the previous
    /// action's span, assigned together so concurrent actions of one task link in seq order.
    pub fn record_linked(&self, task: &str, action: &Action<'_>, span: SpanRef) -> Recorded {
        self.append(task, action, Some(span))
    }

    fn append(&self, task: &str, action: &Action<'_>, span: Option<SpanRef>) -> Recorded {
        let now = Instant::now();
        let Some(mut shard) = self.shard(task) else {
            return Recorded {
                seq: 0,
                previous: None,
            };
        };
        shard.clock += 1;
        let clock = shard.clock;
        if !shard.tasks.contains_key(task) {
            self.make_room(&mut shard, now);
        }
        let idle_ttl = self.idle_ttl;
        let entry = shard.tasks.entry(Arc::from(task)).or_insert_with(|| Task {
            entries: VecDeque::new(),
            next_seq: 1,
            last_span: None,
            last_used: now,
            touched: clock,
        });
        // A task idle past its TTL starts over: its history no longer describes this work.
        if now.duration_since(entry.last_used) >= idle_ttl {
            entry.entries.clear();
            entry.next_seq = 1;
            entry.last_span = None;
        }
        let seq = entry.next_seq;
        let previous = match span {
            Some(span) => entry.last_span.replace(span),
            None => entry.last_span.take(),
        };
        entry.next_seq += 1;
        entry.last_used = now;
        entry.touched = clock;
        let value = ChainEntry {
            seq,
            action: Arc::from(cut(action.action)),
            tool: action.tool.map(|t| Arc::from(cut(t))),
            decision: action.decision,
            status: None,
            attributes: bounded(action.attributes),
            at: action.at,
        }
        .to_value();
        let value = if action.dry_run {
            with_field(value, "dry_run", Value::from(true))
        } else {
            value
        };
        entry.entries.push_back((seq, value));
        while entry.entries.len() > self.max_actions {
            entry.entries.pop_front();
        }
        Recorded { seq, previous }
    }

    /// Record the tool's (or toolgate's) response status for entry `seq` of `task`.
    pub fn complete(&self, task: &str, seq: u64, status: u16) {
        let Some(mut shard) = self.shard(task) else {
            return;
        };
        let Some(t) = shard.tasks.get_mut(task) else {
            return;
        };
        if let Some((_, value)) = t.entries.iter_mut().rev().find(|(s, _)| *s == seq) {
            let current = std::mem::replace(value, Value::Null);
            *value = with_field(current, "status", Value::from(u64::from(status)));
        }
    }

    /// Current number of tasks and entries.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for shard in &self.shards {
            if let Ok(s) = shard.lock() {
                stats.tasks += s.tasks.len();
                stats.entries += s.tasks.values().map(|t| t.entries.len()).sum::<usize>();
            }
        }
        stats
    }

    /// Evict idle tasks, then the least recently used, until a new task fits.
    fn make_room(&self, shard: &mut Shard, now: Instant) {
        if shard.tasks.len() < self.tasks_per_shard {
            return;
        }
        let ttl = self.idle_ttl;
        shard
            .tasks
            .retain(|_, t| now.duration_since(t.last_used) < ttl);
        while shard.tasks.len() >= self.tasks_per_shard {
            let Some(oldest) = shard
                .tasks
                .iter()
                .min_by_key(|(_, t)| t.touched)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            shard.tasks.remove(&oldest);
        }
    }
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

/// `s` cut to at most [`MAX_NAME_BYTES`] at a char boundary.
fn cut(s: &str) -> &str {
    let mut end = s.len().min(MAX_NAME_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// `value` (an object) with `key` set.
fn with_field(mut value: Value, key: &str, field: Value) -> Value {
    if let Ok(obj) = value.as_object_mut() {
        obj.insert(Value::from(key), field);
    }
    value
}
