//! Open task roots: per task, the root span (`task <id>`) its actions are children of, kept
//! until the task ends, goes idle or toolgate stops, then exported once with what the task
//! did — its agent, labels and outcome counts.
//!
//! A root is opened by the first action of a task that joins toolgate's own trace for it (an
//! action whose agent sent `traceparent` stays a child of the agent's span and opens none).
//! Its span id is fixed when it opens, derived from the task's trace id and the moment it
//! opened, so every later action names it as parent long before it is exported, and a task
//! that comes back after its root was exported (idle, evicted, a restart) gets a new root
//! rather than a second span with the same id.
//!
//! Memory is bounded: at most `max_open` roots (two per task the chain ledger can hold, one
//! for each pool), each holding at most [`MAX_LABELS`] labels of at most [`MAX_LABEL_BYTES`]
//! bytes and a task id of at most [`MAX_TASK_BYTES`] bytes; [`worst_case_bytes`] is the
//! resulting bound. When full, the least recently used root is closed early (exported, marked
//! `evicted`), so a flood of tasks costs trace shape, never memory; a root idle for
//! `chain.idle_ttl` is closed by the export thread's sweep.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use toolgate_policy::chain::Outcome;

/// Most labels a root lists; more are counted in `labels_dropped`.
pub const MAX_LABELS: usize = toolgate_policy::labels::MAX_LABELS;
/// Longest label kept on a root (longer ones are dropped, like the ledger's).
pub const MAX_LABEL_BYTES: usize = toolgate_policy::labels::MAX_LABEL_BYTES;
/// Longest task id kept (identify refuses longer ones already).
pub const MAX_TASK_BYTES: usize = crate::identify::MAX_TASK_ID;
/// Estimated heap of one root besides its labels: its map slot (the map may hold twice as
/// many slots as roots), the struct, its copy of the agent id, the task id.
pub const ROOT_OVERHEAD: usize = 1024 + MAX_TASK_BYTES;
/// Estimated heap of one label held in a root's set.
pub const LABEL_OVERHEAD: usize = 64;

/// The most heap `max_open` roots can hold.
pub fn worst_case_bytes(max_open: usize) -> usize {
    max_open.max(1) * (ROOT_OVERHEAD + MAX_LABELS * (MAX_LABEL_BYTES + LABEL_OVERHEAD))
}

/// Why a root was closed (its `toolgate.task.closed` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No action for `chain.idle_ttl`.
    Idle,
    /// An operator ended the task.
    Ended,
    /// Too many tasks open at once: the least recently used was closed early.
    Evicted,
    /// toolgate stopped.
    Shutdown,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Idle => "idle",
            Closed::Ended => "ended",
            Closed::Evicted => "evicted",
            Closed::Shutdown => "shutdown",
        }
    }
}

/// Actions per decision, in [`DECISIONS`] order.
pub const DECISIONS: [&str; 5] = ["allow", "deny", "error", "reject", "none"];
/// Actions per outcome, in [`OUTCOMES`] order (`pending`: none recorded yet).
pub const OUTCOMES: [&str; 6] = [
    "response",
    "refused",
    "agent_disconnected",
    "upstream_error",
    "timeout",
    "pending",
];

fn outcome_index(outcome: Option<Outcome>) -> usize {
    match outcome {
        Some(Outcome::Response(_)) => 0,
        Some(Outcome::Refused(_)) => 1,
        Some(Outcome::AgentDisconnected) => 2,
        Some(Outcome::UpstreamError) => 3,
        Some(Outcome::Timeout) => 4,
        None => 5,
    }
}

fn decision_index(decision: &str) -> usize {
    DECISIONS
        .iter()
        .position(|d| *d == decision)
        .unwrap_or(DECISIONS.len() - 1)
}

/// One task's root span, while it is open.
#[derive(Debug, Clone)]
pub struct Root {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub task: String,
    pub agent: Arc<str>,
    /// The earliest start of its actions.
    pub started: SystemTime,
    /// The latest end of its actions.
    pub ended: SystemTime,
    /// Actions (batch members count one each), per decision and per outcome.
    pub decisions: [u64; DECISIONS.len()],
    pub outcomes: [u64; OUTCOMES.len()],
    pub labels: BTreeSet<Arc<str>>,
    /// Labels not listed because the root already listed [`MAX_LABELS`].
    pub labels_dropped: u64,
    last_used: Instant,
}

impl Root {
    /// Actions recorded under this root.
    pub fn actions(&self) -> u64 {
        self.decisions.iter().sum()
    }
}

/// One decided action (or refused request) of a task, as its root counts it.
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    pub decision: &'a str,
    pub outcome: Option<Outcome>,
    pub labels: &'a [Arc<str>],
}

/// One exchange entering its task's root.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub trace_id: [u8; 16],
    pub task: &'a str,
    pub agent: &'a str,
    pub started: SystemTime,
    pub ended: SystemTime,
}

/// What entering a root gave: the parent for the action's span, and a root closed to make room.
#[derive(Debug)]
pub struct Entered {
    pub span_id: [u8; 8],
    pub evicted: Option<Root>,
}

/// The root span id of a task whose trace is `trace_id`, opened at `opened`.
pub fn root_span_id(trace_id: &[u8; 16], opened: SystemTime) -> [u8; 8] {
    let nanos = opened
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(b"toolgate task root\0");
    h.update(trace_id);
    h.update(nanos.to_be_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 8];
    for (to, from) in id.iter_mut().zip(digest.iter()) {
        *to = *from;
    }
    if id == [0; 8] {
        // All zeros is the invalid span id.
        id[7] = 1;
    }
    id
}

/// The open roots, keyed by trace id (one per agent and task).
#[derive(Debug)]
pub struct Roots {
    open: Mutex<HashMap<[u8; 16], Root>>,
    max_open: usize,
    idle_ttl: Duration,
}

impl Roots {
    /// At most `max_open` roots, each closed after `idle_ttl` without an action.
    pub fn new(max_open: usize, idle_ttl: Duration) -> Roots {
        Roots {
            open: Mutex::new(HashMap::new()),
            max_open: max_open.max(1),
            idle_ttl,
        }
    }

    /// The most roots open at once.
    pub fn max_open(&self) -> usize {
        self.max_open
    }

    /// Roots open now.
    pub fn len(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    /// Whether no root is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Count `counted` under `step`'s task root, opening it if needed (and closing the least
    /// recently used root if the store is full). `None` if the store cannot be used (a
    /// poisoned lock): the action's span is then a root of its own, as before task roots.
    pub fn enter<'a>(
        &self,
        step: &Step<'_>,
        counted: impl IntoIterator<Item = Counted<'a>>,
    ) -> Option<Entered> {
        self.enter_at(step, counted, Instant::now())
    }

    fn enter_at<'a>(
        &self,
        step: &Step<'_>,
        counted: impl IntoIterator<Item = Counted<'a>>,
        now: Instant,
    ) -> Option<Entered> {
        let mut open = self.open.lock().ok()?;
        let mut evicted = None;
        if !open.contains_key(&step.trace_id) && open.len() >= self.max_open {
            let oldest = open
                .iter()
                .min_by_key(|(_, r)| r.last_used)
                .map(|(k, _)| *k);
            evicted = oldest.and_then(|k| open.remove(&k));
        }
        let root = open.entry(step.trace_id).or_insert_with(|| Root {
            trace_id: step.trace_id,
            span_id: root_span_id(&step.trace_id, step.started),
            task: cut(step.task, MAX_TASK_BYTES).to_string(),
            agent: Arc::from(step.agent),
            started: step.started,
            ended: step.ended,
            decisions: [0; DECISIONS.len()],
            outcomes: [0; OUTCOMES.len()],
            labels: BTreeSet::new(),
            labels_dropped: 0,
            last_used: now,
        });
        root.last_used = now;
        root.started = root.started.min(step.started);
        root.ended = root.ended.max(step.ended);
        for c in counted {
            if let Some(n) = root.decisions.get_mut(decision_index(c.decision)) {
                *n += 1;
            }
            if let Some(n) = root.outcomes.get_mut(outcome_index(c.outcome)) {
                *n += 1;
            }
            for label in c.labels {
                if root.labels.contains(label) || label.len() > MAX_LABEL_BYTES {
                    continue;
                }
                if root.labels.len() < MAX_LABELS {
                    root.labels.insert(label.clone());
                } else {
                    root.labels_dropped += 1;
                }
            }
        }
        Some(Entered {
            span_id: root.span_id,
            evicted,
        })
    }

    /// Close the roots idle for `idle_ttl` at `now`.
    pub fn expired(&self, now: Instant) -> Vec<Root> {
        let ttl = self.idle_ttl;
        self.take(|r| now.saturating_duration_since(r.last_used) >= ttl)
    }

    /// Close the roots of task `task` (an operator ended it).
    pub fn end(&self, task: &str) -> Vec<Root> {
        self.take(|r| r.task == task)
    }

    /// Close every root (toolgate stops).
    pub fn drain(&self) -> Vec<Root> {
        self.take(|_| true)
    }

    fn take(&self, mut which: impl FnMut(&Root) -> bool) -> Vec<Root> {
        let Ok(mut open) = self.open.lock() else {
            return Vec::new();
        };
        let keys: Vec<[u8; 16]> = open
            .iter()
            .filter(|(_, r)| which(r))
            .map(|(k, _)| *k)
            .collect();
        let mut closed: Vec<Root> = keys.iter().filter_map(|k| open.remove(k)).collect();
        // A stable order for the export (and for tests).
        closed.sort_by_key(|r| r.started);
        closed
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(trace: u8, task: &str) -> Step<'_> {
        Step {
            trace_id: [trace; 16],
            task,
            agent: "spiffe://t/agent",
            started: SystemTime::now(),
            ended: SystemTime::now(),
        }
    }

    fn counted<'a>(decision: &'a str, outcome: Option<Outcome>) -> Counted<'a> {
        Counted {
            decision,
            outcome,
            labels: &[],
        }
    }

    #[test]
    fn every_action_of_a_task_names_the_same_root_and_is_counted() {
        let roots = Roots::new(8, Duration::from_secs(60));
        let first = roots
            .enter(
                &step(1, "T-1"),
                [counted("allow", Some(Outcome::Response(200)))],
            )
            .unwrap();
        let second = roots
            .enter(
                &step(1, "T-1"),
                [counted("deny", Some(Outcome::Refused(403)))],
            )
            .unwrap();
        let other = roots
            .enter(&step(2, "T-2"), [counted("allow", None)])
            .unwrap();
        assert_eq!(first.span_id, second.span_id);
        assert_ne!(first.span_id, other.span_id);
        assert!(first.evicted.is_none() && other.evicted.is_none());
        let closed = roots.end("T-1");
        assert_eq!(closed.len(), 1);
        let root = &closed[0];
        assert_eq!(root.actions(), 2);
        assert_eq!(root.decisions, [1, 1, 0, 0, 0]);
        assert_eq!(root.outcomes, [1, 1, 0, 0, 0, 0]);
        assert_eq!(roots.len(), 1, "T-2 stays open");
    }

    #[test]
    fn a_task_that_comes_back_after_its_root_closed_gets_a_new_root_id() {
        let roots = Roots::new(8, Duration::from_secs(60));
        let mut s = step(1, "T-1");
        let first = roots.enter(&s, [counted("allow", None)]).unwrap();
        roots.end("T-1");
        s.started += Duration::from_millis(1);
        let again = roots.enter(&s, [counted("allow", None)]).unwrap();
        assert_ne!(first.span_id, again.span_id);
        // Derived from the trace id and the start: the same inputs give the same id.
        assert_eq!(again.span_id, root_span_id(&s.trace_id, s.started));
    }

    #[test]
    fn open_roots_are_bounded_and_the_least_recently_used_is_closed_first() {
        let roots = Roots::new(4, Duration::from_secs(60));
        for i in 0..4u8 {
            let task = format!("T-{i}");
            assert!(roots
                .enter(&step(i, &task), [counted("allow", None)])
                .unwrap()
                .evicted
                .is_none());
        }
        // Task 0 is used again: task 1 is now the least recently used.
        roots.enter(&step(0, "T-0"), [counted("allow", None)]);
        let mut evicted = Vec::new();
        for i in 4..100u8 {
            let task = format!("T-{i}");
            let entered = roots.enter(&step(i, &task), [counted("allow", None)]);
            evicted.extend(entered.unwrap().evicted);
            assert!(roots.len() <= 4);
        }
        assert_eq!(roots.len(), 4);
        assert_eq!(evicted.len(), 96, "every root closed early is handed back");
        assert_eq!(evicted[0].task, "T-1");
        assert_eq!(evicted[1].task, "T-2");
        assert_eq!(evicted[2].task, "T-3");
        assert_eq!(evicted[3].task, "T-0");
    }

    #[test]
    fn labels_are_bounded_per_root() {
        let roots = Roots::new(2, Duration::from_secs(60));
        let labels: Vec<Arc<str>> = (0..MAX_LABELS + 10)
            .map(|i| Arc::from(format!("label-{i}")))
            .chain([Arc::from("x".repeat(MAX_LABEL_BYTES + 1))])
            .collect();
        let counted = Counted {
            decision: "allow",
            outcome: None,
            labels: &labels,
        };
        roots.enter(&step(1, "T-1"), [counted]);
        let root = roots.drain().pop().unwrap();
        assert_eq!(root.labels.len(), MAX_LABELS);
        assert_eq!(root.labels_dropped, 10);
        assert!(root.labels.iter().all(|l| l.len() <= MAX_LABEL_BYTES));
    }

    #[test]
    fn a_long_task_id_is_cut() {
        let roots = Roots::new(2, Duration::from_secs(60));
        let long = "é".repeat(MAX_TASK_BYTES);
        roots.enter(&step(1, &long), [counted("allow", None)]);
        let root = roots.drain().pop().unwrap();
        assert!(root.task.len() <= MAX_TASK_BYTES);
        assert!(long.starts_with(&root.task));
    }

    #[test]
    fn idle_roots_are_closed_by_the_sweep_and_busy_ones_stay() {
        let ttl = Duration::from_secs(60);
        let roots = Roots::new(8, ttl);
        let t0 = Instant::now();
        roots.enter_at(&step(1, "idle"), [counted("allow", None)], t0);
        roots.enter_at(&step(2, "busy"), [counted("allow", None)], t0);
        roots.enter_at(&step(2, "busy"), [counted("allow", None)], t0 + ttl / 2);
        assert!(roots.expired(t0 + ttl / 2).is_empty());
        let closed = roots.expired(t0 + ttl);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].task, "idle");
        assert_eq!(roots.len(), 1);
        assert_eq!(roots.expired(t0 + ttl / 2 + ttl).len(), 1);
        assert!(roots.is_empty());
    }

    #[test]
    fn the_memory_bound_covers_every_open_root() {
        // 512 roots (the default chain.max_tasks in both pools): a few MiB at most.
        let bytes = worst_case_bytes(512);
        assert!(bytes < 8 << 20, "{bytes}");
        assert!(bytes >= 512 * (MAX_TASK_BYTES + MAX_LABELS * MAX_LABEL_BYTES));
    }
}
