//! The chain entries this sidecar has decoded, per task, so that a decision decodes only the
//! entries it has not seen yet.
//!
//! A chain element never changes under one `born` (the id its task's chain got when it was
//! created or restarted; `scripts::RECORD`) except for its settled prefix, which is written
//! once: so *observe* tells the script which run of seqs this sidecar holds under which
//! `born`, and from which seq on it holds them unsettled. The script leaves the settled ones
//! out of its answer and answers the unsettled ones as `<seq>\t<settled>` only. Without it,
//! every decision parsed the JSON of every entry (16 entries: ~380 k instructions, half of the
//! Redis row's cost per request) and Redis copied every entry through Lua.
//!
//! Bounded: at most [`MAX_TASKS`] tasks (then it starts over), each at most the chain's
//! `max_actions` entries (what one observe returned).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use regorus::Value;
use toolgate_policy::chain::TaskKey;

use super::codec::{is_settled, pending_entry, with_prefix};

/// Tasks whose entries are kept; beyond it the cache starts over.
const MAX_TASKS: usize = 256;

/// What the script is told this sidecar holds for a task: its `born` and the run of seqs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Held {
    pub born: String,
    pub from: u64,
    pub to: u64,
    /// The oldest held seq still pending (`to + 1` when all are settled).
    pub unsettled: u64,
}

#[derive(Debug)]
struct Entry {
    /// The element's prefix as stored (`""` while pending; see `codec::with_prefix`).
    settled: String,
    /// The entry as written (pending).
    base: Value,
    /// The entry as policy sees it (`base` settled on `settled`).
    value: Value,
}

#[derive(Debug, Default)]
struct Task {
    born: String,
    entries: BTreeMap<u64, Entry>,
}

/// The decoded entries of recently seen tasks.
#[derive(Debug, Default)]
pub(super) struct Entries {
    tasks: Mutex<HashMap<(bool, String), Task>>,
}

/// An element that names an entry it does not carry, which this sidecar no longer holds: the
/// chain must be read again in full.
#[derive(Debug)]
pub(super) struct Missing;

impl Entries {
    /// What to tell the script about `task`: the longest run of held seqs ending at the newest.
    pub fn held(&self, task: &TaskKey<'_>) -> Held {
        let Ok(tasks) = self.tasks.lock() else {
            return Held::default();
        };
        let Some(t) = tasks.get(&(task.verified, task.id.to_string())) else {
            return Held::default();
        };
        let mut seqs = t.entries.keys().rev();
        let Some(&to) = seqs.next() else {
            return Held::default();
        };
        let mut from = to;
        for &s in seqs {
            if s + 1 != from {
                break;
            }
            from = s;
        }
        let unsettled = t
            .entries
            .range(from..=to)
            .find(|(_, e)| !is_settled(&e.settled))
            .map_or(to + 1, |(&s, _)| s);
        Held {
            born: t.born.clone(),
            from,
            to,
            unsettled,
        }
    }

    /// The chain from the script's `elements` (full `<seq>\t<settled>\t<JSON>` or held
    /// `<seq>\t<settled>`) under `born`, remembering what was decoded. `span`: the chain's
    /// first and last seq when the script left held settled entries out (they are taken from
    /// here, in seq order); `None` when `elements` is the whole chain. Elements that do not
    /// parse are left out; the second value is how many entries the chain holds (the caller
    /// marks the history incomplete when fewer came back).
    pub fn chain(
        &self,
        task: &TaskKey<'_>,
        born: &str,
        span: Option<(u64, u64)>,
        elements: &[String],
    ) -> Result<(Vec<Value>, usize), Missing> {
        let mut tasks = self.tasks.lock().map_err(|_| Missing)?;
        let key = (task.verified, task.id.to_string());
        if !tasks.contains_key(&key) && tasks.len() >= MAX_TASKS {
            tasks.clear();
        }
        let t = tasks.entry(key).or_default();
        if t.born != born {
            t.born = born.to_string();
            t.entries.clear();
        }
        let mut chain = Vec::with_capacity(elements.len());
        let mut seqs = Vec::with_capacity(elements.len());
        let mut oldest = None;
        for element in elements {
            let mut parts = element.splitn(3, '\t');
            let (Some(seq), Some(settled)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(seq) = seq.parse::<u64>() else {
                continue;
            };
            oldest = Some(oldest.map_or(seq, |o: u64| o.min(seq)));
            // A held entry is taken as held, answered short or in full (in full when this
            // sidecar appended it but did not hold it yet when this read was asked): an
            // element's JSON never changes under one `born`, so it is decoded once.
            if let Some(e) = t.entries.get_mut(&seq) {
                if e.settled != settled {
                    e.value = settle(&e.base, settled);
                    e.settled = settled.to_string();
                }
                chain.push(e.value.clone());
                seqs.push(seq);
                continue;
            }
            let json = parts.next().ok_or(Missing)?;
            let Some(base) = pending_entry(seq, json) else {
                continue;
            };
            let value = settle(&base, settled);
            chain.push(value.clone());
            seqs.push(seq);
            t.entries.insert(
                seq,
                Entry {
                    settled: settled.to_string(),
                    base,
                    value,
                },
            );
        }
        let Some((first, last)) = span else {
            if let Some(oldest) = oldest {
                t.entries = t.entries.split_off(&oldest);
            }
            return Ok((chain, elements.len()));
        };
        // Left out: held and settled. The chain is every seq from first to last, in order.
        let expected = usize::try_from(last.saturating_sub(first) + 1).map_err(|_| Missing)?;
        if first > last || expected > elements.len() + t.entries.len() {
            return Err(Missing);
        }
        let mut whole = Vec::with_capacity(expected);
        for seq in first..=last {
            match seqs.iter().position(|&s| s == seq) {
                Some(i) => whole.push(chain.get(i).ok_or(Missing)?.clone()),
                None => whole.push(t.entries.get(&seq).ok_or(Missing)?.value.clone()),
            }
        }
        t.entries = t.entries.split_off(&first);
        Ok((whole, expected))
    }

    /// Hold `value`, the entry this sidecar appended as `seq` under `born` (pending), so that
    /// it is never decoded from its JSON: only when `born` is the one already held.
    pub fn own(&self, task: &TaskKey<'_>, born: &str, seq: u64, value: Value) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        let Some(t) = tasks.get_mut(&(task.verified, task.id.to_string())) else {
            return;
        };
        if t.born == born && !born.is_empty() {
            t.entries.insert(
                seq,
                Entry {
                    settled: String::new(),
                    base: value.clone(),
                    value,
                },
            );
        }
    }

    /// Forget `task` (its chain must be read again in full).
    pub fn forget(&self, task: &TaskKey<'_>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.remove(&(task.verified, task.id.to_string()));
        }
    }
}

/// `base` as policy sees it with its element's prefix `settled` (decision, outcome).
fn settle(base: &Value, settled: &str) -> Value {
    with_prefix(base.clone(), settled)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::super::codec::entry_of;
    use super::*;

    fn key(id: &str) -> TaskKey<'_> {
        TaskKey {
            id,
            verified: false,
            began: None,
        }
    }

    fn full(seq: u64, settled: &str) -> String {
        format!("{seq}\t{settled}\t{{\"action\":\"ticket.read\",\"n\":{seq}}}")
    }

    #[test]
    fn held_entries_are_answered_short_and_read_as_decoded() {
        let cache = Entries::default();
        let t = key("t1");
        assert_eq!(cache.held(&t), Held::default());
        let elements: Vec<String> = (3..=5).map(|s| full(s, "")).collect();
        let first = cache.chain(&t, "b1", None, &elements).unwrap().0;
        assert_eq!(
            cache.held(&t),
            Held {
                born: "b1".into(),
                from: 3,
                to: 5,
                unsettled: 3,
            }
        );
        // The same chain answered short, one entry settled meanwhile, one new.
        let short = vec![
            "4\t".to_string(),
            "5\tresponse:200".to_string(),
            full(6, ""),
        ];
        let second = cache.chain(&t, "b1", None, &short).unwrap().0;
        assert_eq!(second.len(), 3);
        assert_eq!(second[0], first[1]);
        let settled = entry_of(&full(5, "response:200")).unwrap();
        assert_eq!(second[1], settled);
        assert_eq!(second[2], entry_of(&full(6, "")).unwrap());
        // Seq 3 was trimmed: no longer held. 4 and 6 are pending.
        let held = cache.held(&t);
        assert_eq!((held.from, held.to, held.unsettled), (4, 6, 4));
        let short = vec![
            "4\trefused:403".to_string(),
            "5\tresponse:200".to_string(),
            "6\t".to_string(),
        ];
        let second = cache.chain(&t, "b1", None, &short).unwrap().0;
        assert_eq!(second[0], entry_of(&full(4, "refused:403")).unwrap());
        assert_eq!(cache.held(&t).unsettled, 6);
        // The script leaves 4 and 5 out (span 4..=7): they come from the cache, in order,
        // with 6 settled now and 7 new.
        let answer = vec!["6\tresponse:201".to_string(), full(7, "")];
        let (third, expected) = cache.chain(&t, "b1", Some((4, 7)), &answer).unwrap();
        assert_eq!(expected, 4);
        assert_eq!(third[..2], second[..2]);
        assert_eq!(third[2], entry_of(&full(6, "response:201")).unwrap());
        assert_eq!(third[3], entry_of(&full(7, "")).unwrap());
        assert_eq!(cache.held(&t).unsettled, 7);
        // A span naming a seq this sidecar does not hold: read again in full.
        assert!(cache.chain(&t, "b1", Some((2, 7)), &answer).is_err());
    }

    #[test]
    fn a_new_born_or_an_unknown_short_element_never_reuses_an_entry() {
        let cache = Entries::default();
        let t = key("t1");
        cache
            .chain(&t, "b1", None, &[full(1, ""), full(2, "")])
            .unwrap();
        // The task was restarted: seq 1 is another entry now, and must come in full.
        assert!(cache.chain(&t, "b2", None, &["1\t".to_string()]).is_err());
        cache.forget(&t);
        assert_eq!(cache.held(&t), Held::default());
        let fresh = cache
            .chain(&t, "b2", None, &[full(1, "refused:403")])
            .unwrap()
            .0;
        assert_eq!(fresh, vec![entry_of(&full(1, "refused:403")).unwrap()]);
        // A settled full element decodes as entry_of reads it, and is held pending underneath.
        assert_eq!(
            cache
                .chain(&t, "b2", None, &["1\trefused:403".to_string()])
                .unwrap()
                .0,
            fresh
        );
    }

    #[test]
    fn a_held_entry_answered_in_full_is_taken_as_held_not_decoded_again() {
        let cache = Entries::default();
        let t = key("t1");
        let own = entry_of(&full(2, "")).unwrap();
        cache.chain(&t, "b1", None, &[full(1, "")]).unwrap();
        cache.own(&t, "b1", 2, own.clone());
        // Asked before seq 2 was held, the script answered it in full: the held entry is
        // taken (its JSON is never read: here it even says something else), settled as
        // answered.
        let other = "2\tallow|response:200\t{\"action\":\"elsewhere\"}".to_string();
        let (chain, _) = cache.chain(&t, "b1", None, &[full(1, ""), other]).unwrap();
        assert_eq!(chain[1], with_prefix(own, "allow|response:200"));
        assert_eq!(chain[1]["action"], Value::from("ticket.read"));
        // Under another born the same seq is another entry: decoded.
        let (chain, _) = cache
            .chain(&t, "b2", None, &[full(1, ""), full(2, "")])
            .unwrap();
        assert_eq!(chain[1], entry_of(&full(2, "")).unwrap());
    }

    #[test]
    fn an_entry_this_sidecar_appended_is_held_without_decoding_only_under_its_born() {
        let cache = Entries::default();
        let t = key("t1");
        cache
            .chain(&t, "b1", None, &[full(1, "response:200")])
            .unwrap();
        let own = entry_of(&full(2, "")).unwrap();
        // Appended under another chain (restarted meanwhile): not held.
        cache.own(&t, "b0", 2, own.clone());
        assert_eq!(cache.held(&t).to, 1);
        cache.own(&t, "b1", 2, own.clone());
        let held = cache.held(&t);
        assert_eq!((held.from, held.to, held.unsettled), (1, 2, 2));
        // The script answers it short, settled; it reads as decoded.
        let (chain, expected) = cache
            .chain(
                &t,
                "b1",
                Some((1, 2)),
                &["2\tallow|response:200".to_string()],
            )
            .unwrap();
        assert_eq!(expected, 2);
        assert_eq!(chain[1], entry_of(&full(2, "allow|response:200")).unwrap());
        // A task this sidecar holds nothing of is left alone.
        cache.own(&key("t2"), "b1", 1, own);
        assert_eq!(cache.held(&key("t2")), Held::default());
    }

    #[test]
    fn the_cache_is_bounded_in_tasks() {
        let cache = Entries::default();
        let ids: Vec<String> = (0..=MAX_TASKS).map(|i| format!("t{i}")).collect();
        for id in &ids {
            cache.chain(&key(id), "b", None, &[full(1, "")]).unwrap();
        }
        assert!(cache.tasks.lock().unwrap().len() <= MAX_TASKS);
        // The newest is held.
        assert_eq!(cache.held(&key(&ids[MAX_TASKS])).to, 1);
    }
}
