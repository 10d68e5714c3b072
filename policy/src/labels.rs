//! Sticky labels: what a task or an agent has touched (`pii`, `financial`), set by a catalogued
//! action (`labels: [pii]`) or a decision obligation (`"labels": ["pii"]`) and kept outside
//! the chain's `max_actions` window, so "no export after reading PII" cannot be escaped by
//! making enough harmless calls, and — through the agent's labels — not by switching task.
//!
//! What it holds: per task (in the chain ledger) and per agent ([`AgentLabels`]), each label
//! with the action that last set it and when. Bounds: at most [`MAX_LABELS`] labels per task
//! or agent, names of at most [`MAX_LABEL_BYTES`] bytes, at most [`MAX_AGENTS`] agents; an
//! agent's label lasts `chain.agent_label_ttl` from when it was last set. When a set is full,
//! a new label is not stored but [`OVERFLOW`] is set instead, so policy sees that something
//! is missing and can fail closed; nothing already set is ever dropped to make room.
//! [`AgentLabels::worst_case_bytes`] is the resulting bound, checked in the tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use regorus::Value;

use crate::evaluate::timestamp;

/// Most labels one task or agent holds.
pub const MAX_LABELS: usize = 32;
/// Longest label name.
pub const MAX_LABEL_BYTES: usize = 64;
/// Most agents whose labels are remembered (one sidecar serves one agent; a shared backend
/// serves many).
pub const MAX_AGENTS: usize = 1024;
/// Set when a label could not be stored because the set was full.
pub const OVERFLOW: &str = "_overflow";
/// Estimated heap of one stored label: its name, the setter's name (cut at 128 bytes), the
/// map node and the policy-value form.
const LABEL_BYTES: usize = 640;

/// Whether `name` may be a label: 1 to [`MAX_LABEL_BYTES`] of `A-Z a-z 0-9 _ . : - /`.
pub fn is_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LABEL_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-' | b'/'))
}

/// Who set a label, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The action that set it.
    pub by: Arc<str>,
    pub at: SystemTime,
}

/// A bounded set of labels with their marks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSet {
    labels: BTreeMap<Arc<str>, Mark>,
}

impl LabelSet {
    /// Set `label` (marked by `mark`); a set label takes the newer mark. A full set records
    /// [`OVERFLOW`] instead of a new label.
    pub fn set(&mut self, label: &Arc<str>, mark: &Mark) {
        if let Some(m) = self.labels.get_mut(label) {
            *m = mark.clone();
            return;
        }
        if self.labels.len() < MAX_LABELS {
            self.labels.insert(label.clone(), mark.clone());
        } else {
            let overflow: Arc<str> = Arc::from(OVERFLOW);
            self.labels.insert(overflow, mark.clone());
        }
    }

    /// A set read back from a shared store: at most [`MAX_LABELS`] labels and [`OVERFLOW`]
    /// (more are ignored), as they were stored.
    pub fn from_marks(marks: impl IntoIterator<Item = (Arc<str>, Mark)>) -> LabelSet {
        let mut labels = BTreeMap::new();
        for (name, mark) in marks {
            if labels.len() > MAX_LABELS {
                break;
            }
            labels.insert(name, mark);
        }
        LabelSet { labels }
    }

    /// Drop the labels `keep` refuses (expired ones).
    fn retain(&mut self, keep: impl Fn(&Mark) -> bool) {
        self.labels.retain(|_, m| keep(m));
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Whether `label` is set.
    pub fn contains(&self, label: &str) -> bool {
        self.labels.contains_key(label)
    }

    /// The labels as policy sees them: `{"pii": {"by": "crm.lookup_customer", "at": "…"}}`.
    pub fn to_value(&self) -> Value {
        let map: BTreeMap<Value, Value> = self
            .labels
            .iter()
            .map(|(name, mark)| {
                let fields: BTreeMap<Value, Value> = [
                    (Value::from("by"), Value::from(&*mark.by)),
                    (Value::from("at"), Value::from(timestamp(mark.at))),
                ]
                .into_iter()
                .collect();
                (Value::from(&**name), Value::from(fields))
            })
            .collect();
        Value::from(map)
    }

    /// The labels as JSON (operator views, fixtures).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.labels
                .iter()
                .map(|(name, mark)| {
                    (
                        name.to_string(),
                        serde_json::json!({ "by": &*mark.by, "at": timestamp(mark.at) }),
                    )
                })
                .collect(),
        )
    }
}

/// Labels per agent, each lasting `ttl` from when it was last set.
#[derive(Debug)]
pub struct AgentLabels {
    agents: Mutex<HashMap<Arc<str>, LabelSet>>,
    ttl: Duration,
}

impl AgentLabels {
    /// An empty store whose labels last `ttl`.
    pub fn new(ttl: Duration) -> AgentLabels {
        AgentLabels {
            agents: Mutex::default(),
            ttl,
        }
    }

    /// The most heap the store can hold.
    pub fn worst_case_bytes() -> usize {
        MAX_AGENTS * (MAX_LABELS * LABEL_BYTES + 512)
    }

    fn live(&self, now: SystemTime) -> impl Fn(&Mark) -> bool + '_ {
        move |m: &Mark| m.at.checked_add(self.ttl).is_none_or(|end| end > now)
    }

    /// The agent's labels in force at `now`, as a policy value.
    pub fn view(&self, agent: &str, now: SystemTime) -> Value {
        let Ok(mut agents) = self.agents.lock() else {
            // A poisoned store cannot say what is missing: report it as overflowing, which
            // a fail-closed rule treats like an unknown label.
            return overflowing(now);
        };
        match agents.get_mut(agent) {
            Some(set) => {
                set.retain(self.live(now));
                set.to_value()
            }
            None => Value::from(BTreeMap::new()),
        }
    }

    /// Set `labels` on `agent`, marked by `mark`.
    pub fn set(&self, agent: &str, labels: &[Arc<str>], mark: &Mark) {
        if labels.is_empty() {
            return;
        }
        let Ok(mut agents) = self.agents.lock() else {
            return;
        };
        if !agents.contains_key(agent) && agents.len() >= MAX_AGENTS {
            let live = self.live(mark.at);
            agents.retain(|_, set| {
                set.retain(&live);
                !set.is_empty()
            });
            if agents.len() >= MAX_AGENTS {
                tracing::error!(
                    agent,
                    max = MAX_AGENTS,
                    "agent labels are full; labels not recorded"
                );
                return;
            }
        }
        let set = agents.entry(Arc::from(agent)).or_default();
        set.retain(self.live(mark.at));
        for label in labels {
            set.set(label, mark);
        }
    }

    /// The agent's labels as JSON (operator views).
    pub fn describe(&self, agent: &str, now: SystemTime) -> serde_json::Value {
        let Ok(mut agents) = self.agents.lock() else {
            return serde_json::Value::Null;
        };
        match agents.get_mut(agent) {
            Some(set) => {
                set.retain(self.live(now));
                set.to_json()
            }
            None => serde_json::json!({}),
        }
    }
}

fn overflowing(now: SystemTime) -> Value {
    let mut set = LabelSet::default();
    set.labels.insert(
        Arc::from(OVERFLOW),
        Mark {
            by: Arc::from("toolgate"),
            at: now,
        },
    );
    set.to_value()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn mark(by: &str, at: SystemTime) -> Mark {
        Mark {
            by: Arc::from(by),
            at,
        }
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(is_label("pii"));
        assert!(is_label("customer:ACME/eu-1.x"));
        assert!(!is_label(""));
        assert!(!is_label("a b"));
        assert!(!is_label(&"x".repeat(MAX_LABEL_BYTES + 1)));
    }

    #[test]
    fn a_full_set_keeps_every_label_and_says_it_overflowed() {
        let mut set = LabelSet::default();
        let now = SystemTime::now();
        for i in 0..MAX_LABELS + 10 {
            set.set(&Arc::from(format!("l{i}")), &mark("a", now));
        }
        assert_eq!(set.len(), MAX_LABELS + 1);
        assert!(set.contains("l0"), "nothing set is dropped");
        assert!(set.contains(OVERFLOW));
        assert!(!set.contains(&format!("l{}", MAX_LABELS + 5)));
    }

    #[test]
    fn agent_labels_last_their_ttl_from_the_last_setting() {
        let store = AgentLabels::new(Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        store.set("a", &[Arc::from("pii")], &mark("crm.lookup", t0));
        let v = store.view("a", t0 + Duration::from_secs(59));
        assert_eq!(v["pii"]["by"], Value::from("crm.lookup"));
        assert_eq!(
            store.view("a", t0 + Duration::from_secs(61)),
            Value::from(BTreeMap::new())
        );
        // Set again later: lasts from then.
        store.set(
            "a",
            &[Arc::from("pii")],
            &mark("crm.lookup", t0 + Duration::from_secs(100)),
        );
        assert!(store.view("a", t0 + Duration::from_secs(150))["pii"] != Value::Undefined);
        assert_eq!(store.view("b", t0), Value::from(BTreeMap::new()));
    }

    #[test]
    fn the_agent_store_is_bounded() {
        let store = AgentLabels::new(Duration::from_secs(3600));
        let now = SystemTime::now();
        for i in 0..MAX_AGENTS + 5 {
            store.set(&format!("agent-{i}"), &[Arc::from("pii")], &mark("x", now));
        }
        assert_eq!(store.agents.lock().unwrap().len(), MAX_AGENTS);
        // The first agents keep their labels: nothing is evicted to make room.
        assert!(store.view("agent-0", now)["pii"] != Value::Undefined);
    }
}
