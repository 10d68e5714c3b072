//! Task lifecycle: the tasks that ended (an operator or the orchestrator ended them,
//! `POST /v1/tasks/{id}/end`), and the credentials toolgate issued under each task — only
//! their ids and expiry — so an ended task's credentials can be listed as dead.
//!
//! An ended task is refused before policy (`task-ended`) until its retention
//! (`chain.ended_retention`) ends, and its chain, copied when it ended, is kept as long for
//! audit. Ending an ended task changes nothing (the first end stands).
//!
//! Bounds: at most [`CAPACITY`] ended tasks at once, ids of at most `MAX_ID` bytes; an end
//! is never evicted before its retention — when full, expired ends are dropped first and, if
//! the room is still full, the new end is refused ([`EndError::Full`], a 503 for the
//! operator). Chain copies are kept for at most `keep_chains` ended tasks (the serving
//! configuration's `chain.max_tasks`), the oldest copy dropped first (the end itself stays,
//! `chain_dropped`). Issued credentials: at most [`MAX_TRACKED_TASKS`] tasks and
//! [`MAX_PER_TASK`] credentials per task; expired credentials leave first; beyond, the oldest
//! leave and the task is marked `truncated` — the index only lists credentials: whether one is
//! dead is decided by its `task` and `sub` claims (introspection, the revocation feed's task
//! and agent entries), which no bound cuts. `state/tasks/tests.rs` fills each bound.
//!
//! When unavailable: a poisoned lock answers [`StateUnavailable`]; the proxy then refuses the
//! request (503) rather than serve an ended task.
//!
//! Kept across restarts with `state.dir` (section `ended_tasks` of `state.json`, without the
//! chain copies, which are memory like the chain itself); the issued index is memory only. A
//! shared backend (Redis, issue 16) implements [`TaskStore`]; [`State`] is the memory one.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::approvals::Stored;
use super::revocations::{parse_rfc3339, rfc3339, since_epoch};
use super::{State, StateUnavailable};

/// Most ended tasks held at once.
pub const CAPACITY: usize = 10_000;
/// Most tasks whose issued credentials are indexed.
pub const MAX_TRACKED_TASKS: usize = 4_096;
/// Most credentials indexed per task.
pub const MAX_PER_TASK: usize = 256;
/// Longest `by` or `reason` kept.
pub const MAX_NOTE: usize = 256;

/// An ended task, as the operator API shows it and the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndedTask {
    pub id: String,
    /// RFC 3339, to the second.
    pub at: String,
    /// Who ended it (`operator` unless the request said).
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Until when it stays ended and its chain is kept.
    pub until: String,
}

/// An ended task with its chain as it was when it ended (while the copy is kept).
#[derive(Debug, Clone, PartialEq)]
pub struct EndedView {
    pub task: EndedTask,
    /// `None` once the copy was dropped for room, or after a restart.
    pub chain: Option<Json>,
}

/// A request to end a task.
#[derive(Debug, Clone)]
pub struct End {
    pub task: String,
    pub by: String,
    pub reason: Option<String>,
    /// The task's chain now, kept for audit.
    pub chain: Option<Json>,
}

/// The bounds an end is held to (`chain.ended_retention`, `chain.max_tasks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndBounds {
    pub retention: Duration,
    pub keep_chains: usize,
}

/// One credential toolgate issued under a task: its id and expiry, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issued {
    pub jti: String,
    /// `jwt` (a minted credential) or `delegation` (a delegation token).
    pub kind: &'static str,
    /// The credential's name in the configuration (`delegation` for a delegation token).
    pub credential: String,
    /// Who it was issued to (its `sub`).
    pub agent: String,
    /// Its `exp`, seconds since the epoch.
    pub exp: u64,
}

/// What ending a task did.
#[derive(Debug, Clone)]
pub struct Ending {
    pub ended: EndedTask,
    /// `false` when the task had ended already (the first end stands).
    pub changed: bool,
    /// The unexpired credentials issued under it, now dead.
    pub credentials: Vec<Issued>,
}

/// Why a task could not be ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndError {
    #[error(transparent)]
    Unavailable(#[from] StateUnavailable),
    #[error("{CAPACITY} ended tasks are held, the most toolgate keeps, and none has passed chain.ended_retention; nothing is evicted to make room. Revoke the agent, or wait")]
    Full,
    #[error("the retention ends beyond any time toolgate can represent")]
    Overflow,
}

/// What a decision needs from task lifecycle state, and what the operator API and the
/// credential stage change. The memory backend is [`State`]; a shared one implements the same.
pub trait TaskStore: Send + Sync + std::fmt::Debug {
    /// Whether any task may be ended: when none is (almost always), nothing is looked up.
    /// Never blocks.
    fn any_ended(&self) -> bool;

    /// Task `id`'s end, if it ended and its retention has not passed at `now`.
    fn ended(&self, id: &str, now: SystemTime) -> Result<Option<EndedView>, StateUnavailable>;

    /// End a task (see the module doc); the unexpired credentials issued under it.
    fn end(&self, end: End, bounds: EndBounds, now: SystemTime)
        -> Result<Stored<Ending>, EndError>;

    /// Every ended task within its retention at `now`, sorted by id.
    fn ended_tasks(&self, now: SystemTime) -> Result<Vec<EndedTask>, StateUnavailable>;

    /// Index a credential issued under `task` (expired ones and, past the bounds, the oldest
    /// leave the index).
    fn issued(&self, task: &str, credential: Issued, now: SystemTime);

    /// The unexpired credentials indexed under tasks `tasks` or issued to agents `agents`,
    /// with their task, and whether any of those tasks' lists was cut.
    fn issued_for(
        &self,
        tasks: &[&str],
        agents: &[&str],
        now: SystemTime,
    ) -> (Vec<(String, Issued)>, bool);
}

#[derive(Debug, Clone)]
struct Held {
    task: EndedTask,
    until: u64,
    chain: Option<Json>,
    /// Order of ending: the oldest chain copy leaves first.
    order: u64,
}

/// The ended tasks of this process: the memory set behind [`State`].
#[derive(Debug, Default)]
pub struct EndedTasks {
    held: HashMap<String, Held>,
    order: u64,
    /// Chain copies kept.
    chains: usize,
    /// (order, task) of the ends holding a chain copy, oldest first (entries whose end is
    /// gone or was replaced are skipped).
    copies: VecDeque<(u64, String)>,
}

fn note(s: &str) -> String {
    let mut end = s.len().min(MAX_NOTE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}

impl EndedTasks {
    /// How many ends are held (expired ones not yet dropped included).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// How many chain copies are kept.
    pub fn chains(&self) -> usize {
        self.chains
    }

    fn drop_expired(&mut self, now: u64) {
        let before = self.held.len();
        self.held.retain(|_, h| h.until > now);
        if self.held.len() != before {
            self.chains = self.held.values().filter(|h| h.chain.is_some()).count();
            let held = &self.held;
            self.copies
                .retain(|(order, id)| held.get(id).is_some_and(|h| h.order == *order));
        }
    }

    /// End `end.task` at `now` (seconds) unless it is ended already.
    pub fn end(
        &mut self,
        end: End,
        bounds: EndBounds,
        now: u64,
    ) -> Result<(EndedTask, bool), EndError> {
        if let Some(h) = self.held.get(&end.task).filter(|h| h.until > now) {
            return Ok((h.task.clone(), false));
        }
        let until = now
            .checked_add(bounds.retention.as_secs().max(1))
            .ok_or(EndError::Overflow)?;
        if !self.held.contains_key(&end.task) && self.held.len() >= CAPACITY {
            self.drop_expired(now);
            if self.held.len() >= CAPACITY {
                return Err(EndError::Full);
            }
        }
        let task = EndedTask {
            id: end.task.clone(),
            at: rfc3339(now),
            by: note(&end.by),
            reason: end.reason.as_deref().map(note),
            until: rfc3339(until),
        };
        self.order += 1;
        let chain = end.chain.filter(|_| bounds.keep_chains > 0);
        if let Some(old) = self.held.insert(
            end.task,
            Held {
                task: task.clone(),
                until,
                chain: chain.clone(),
                order: self.order,
            },
        ) {
            if old.chain.is_some() {
                self.chains = self.chains.saturating_sub(1);
            }
        }
        if chain.is_some() {
            self.chains += 1;
            self.copies.push_back((self.order, task.id.clone()));
        }
        while self.chains > bounds.keep_chains {
            let Some((order, id)) = self.copies.pop_front() else {
                break;
            };
            if let Some(h) = self.held.get_mut(&id).filter(|h| h.order == order) {
                if h.chain.take().is_some() {
                    self.chains -= 1;
                }
            }
        }
        Ok((task, true))
    }

    /// Restore an end read back from the state file (its chain copy is not kept there).
    pub fn restore(&mut self, task: EndedTask, now: u64) -> Result<(), String> {
        let until = parse_rfc3339(&task.until)
            .ok_or_else(|| format!("until {:?} is not an RFC 3339 time", task.until))?;
        if parse_rfc3339(&task.at).is_none() {
            return Err(format!("at {:?} is not an RFC 3339 time", task.at));
        }
        if !super::valid_id(&task.id) {
            return Err("the id must be 1 to 512 bytes without control characters".into());
        }
        if until <= now {
            return Ok(());
        }
        if self.held.len() >= CAPACITY {
            return Err(format!("more than {CAPACITY} ended tasks"));
        }
        self.order += 1;
        self.held.insert(
            task.id.clone(),
            Held {
                task,
                until,
                chain: None,
                order: self.order,
            },
        );
        Ok(())
    }

    /// Task `id`'s end at `now`, if in force.
    pub fn get(&self, id: &str, now: u64) -> Option<EndedView> {
        self.held
            .get(id)
            .filter(|h| h.until > now)
            .map(|h| EndedView {
                task: h.task.clone(),
                chain: h.chain.clone(),
            })
    }

    /// Every end in force at `now`, sorted by id.
    pub fn list(&self, now: u64) -> Vec<EndedTask> {
        let mut all: Vec<EndedTask> = self
            .held
            .values()
            .filter(|h| h.until > now)
            .map(|h| h.task.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

#[derive(Debug, Default)]
struct TaskCredentials {
    items: VecDeque<Issued>,
    truncated: bool,
    /// The latest expiry indexed: past it, the whole entry can go.
    last_exp: u64,
}

/// The credentials issued per task (memory only), bounded.
#[derive(Debug, Default)]
pub struct IssuedIndex {
    tasks: HashMap<String, TaskCredentials>,
}

impl IssuedIndex {
    /// How many tasks and credentials are indexed.
    pub fn size(&self) -> (usize, usize) {
        (
            self.tasks.len(),
            self.tasks.values().map(|t| t.items.len()).sum(),
        )
    }

    /// Index `credential` under `task` at `now` (seconds).
    pub fn add(&mut self, task: &str, credential: Issued, now: u64) {
        if !self.tasks.contains_key(task) && self.tasks.len() >= MAX_TRACKED_TASKS {
            self.tasks.retain(|_, t| t.last_exp > now);
            if self.tasks.len() >= MAX_TRACKED_TASKS {
                // The task whose credentials all expire soonest leaves the index first.
                let soonest = self
                    .tasks
                    .iter()
                    .min_by_key(|(_, t)| t.last_exp)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    self.tasks.remove(&k);
                }
            }
        }
        let entry = self.tasks.entry(task.to_string()).or_default();
        if entry.items.len() >= MAX_PER_TASK {
            entry.items.retain(|c| c.exp > now);
        }
        while entry.items.len() >= MAX_PER_TASK {
            entry.items.pop_front();
            entry.truncated = true;
        }
        entry.last_exp = entry.last_exp.max(credential.exp);
        entry.items.push_back(credential);
    }

    /// The unexpired credentials of `tasks` or issued to `agents`, and whether a list was cut.
    pub fn find(&self, tasks: &[&str], agents: &[&str], now: u64) -> (Vec<(String, Issued)>, bool) {
        let mut out = Vec::new();
        let mut truncated = false;
        for (task, creds) in &self.tasks {
            let whole = tasks.contains(&task.as_str());
            for c in creds.items.iter().filter(|c| c.exp > now) {
                if whole || agents.contains(&c.agent.as_str()) {
                    out.push((task.clone(), c.clone()));
                }
            }
            truncated |= whole && creds.truncated;
        }
        out.sort_by(|a, b| (&a.0, &a.1.jti).cmp(&(&b.0, &b.1.jti)));
        (out, truncated)
    }
}

impl TaskStore for State {
    fn any_ended(&self) -> bool {
        self.ended_count.load(Ordering::Acquire) > 0
    }

    fn ended(&self, id: &str, now: SystemTime) -> Result<Option<EndedView>, StateUnavailable> {
        if !self.any_ended() {
            return Ok(None);
        }
        let set = self.ended.read().map_err(|_| StateUnavailable)?;
        Ok(set.get(id, since_epoch(now).as_secs()))
    }

    fn end(
        &self,
        end: End,
        bounds: EndBounds,
        now: SystemTime,
    ) -> Result<Stored<Ending>, EndError> {
        let secs = since_epoch(now).as_secs();
        let task = end.task.clone();
        let (ended, changed) = {
            let mut set = self.ended.write().map_err(|_| StateUnavailable)?;
            let result = set.end(end, bounds, secs)?;
            self.ended_count.store(set.held(), Ordering::Release);
            result
        };
        let (credentials, _) = self.issued_for(&[task.as_str()], &[], now);
        let unsaved = if changed {
            self.save(now).err().map(|(path, e)| {
                format!("{path} could not be written ({e}); this end will not survive a restart of toolgate")
            })
        } else {
            None
        };
        Ok(Stored {
            value: Ending {
                ended,
                changed,
                credentials: credentials.into_iter().map(|(_, c)| c).collect(),
            },
            unsaved,
        })
    }

    fn ended_tasks(&self, now: SystemTime) -> Result<Vec<EndedTask>, StateUnavailable> {
        let set = self.ended.read().map_err(|_| StateUnavailable)?;
        Ok(set.list(since_epoch(now).as_secs()))
    }

    fn issued(&self, task: &str, credential: Issued, now: SystemTime) {
        if let Ok(mut index) = self.issued.lock() {
            index.add(task, credential, since_epoch(now).as_secs());
        }
    }

    fn issued_for(
        &self,
        tasks: &[&str],
        agents: &[&str],
        now: SystemTime,
    ) -> (Vec<(String, Issued)>, bool) {
        match self.issued.lock() {
            Ok(index) => index.find(tasks, agents, since_epoch(now).as_secs()),
            // A poisoned index lists nothing; the feed's task and agent entries still hold.
            Err(_) => (Vec::new(), true),
        }
    }
}
