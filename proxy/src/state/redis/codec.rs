//! How the Redis backend writes what it stores, and reads it back: chain elements
//! (`<seq>\t[<decision>|][<outcome>]\t<entry JSON>`), labels (`<at ms>\t<action>`), spans (hex) and outcomes
//! (`response:200`). Anything that does not parse is left out, never guessed at.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regorus::Value;
use toolgate_policy::chain::{self, Outcome, SpanRef};
use toolgate_policy::labels::{LabelSet, Mark};

/// A label hash (`name → "<at ms>\t<by>"`) as a label set, without labels older than `ttl`.
pub(super) fn label_set(
    fields: Vec<(String, String)>,
    ttl: Option<(Duration, SystemTime)>,
) -> LabelSet {
    LabelSet::from_marks(fields.into_iter().filter_map(|(name, value)| {
        let (at, by) = value.split_once('\t')?;
        let at = UNIX_EPOCH.checked_add(Duration::from_millis(at.parse().ok()?))?;
        if let Some((ttl, now)) = ttl {
            if at.checked_add(ttl).is_some_and(|end| end <= now) {
                return None;
            }
        }
        Some((
            Arc::from(name.as_str()),
            Mark {
                by: Arc::from(by),
                at,
            },
        ))
    }))
}

pub(super) fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

/// How a settled element writes its outcome, and back.
pub(super) fn outcome_text(outcome: Outcome) -> String {
    match outcome.status() {
        Some(s) => format!("{}:{s}", outcome.as_str()),
        None => format!("{}:", outcome.as_str()),
    }
}

pub(super) fn outcome_of(text: &str) -> Option<Outcome> {
    let (kind, status) = text.split_once(':')?;
    let status = status.parse::<u16>().ok();
    match (kind, status) {
        ("response", Some(s)) => Some(Outcome::Response(s)),
        ("refused", Some(s)) => Some(Outcome::Refused(s)),
        ("agent_disconnected", _) => Some(Outcome::AgentDisconnected),
        ("upstream_error", _) => Some(Outcome::UpstreamError),
        ("timeout", _) => Some(Outcome::Timeout),
        _ => None,
    }
}

/// One chain element as policy sees the entry; `None` for one that does not parse.
pub(super) fn entry_of(element: &str) -> Option<Value> {
    let mut parts = element.splitn(3, '\t');
    let (seq, prefix, json) = (parts.next()?, parts.next()?, parts.next()?);
    let value = pending_entry(seq.parse().ok()?, json)?;
    Some(with_prefix(value, prefix))
}

/// An element's prefix: `[<decision>[+dry_run]|][<outcome>]` — the decision when it was
/// written after the entry (appended undecided by *observe*), the outcome once settled.
fn split_prefix(prefix: &str) -> (Option<&str>, &str) {
    match prefix.split_once('|') {
        Some((decision, outcome)) => (Some(decision), outcome),
        None => (None, prefix),
    }
}

/// Whether an element's prefix holds its outcome (then it never changes again).
pub(super) fn is_settled(prefix: &str) -> bool {
    outcome_of(split_prefix(prefix).1).is_some()
}

/// `value`, a pending entry as written, with what its element's prefix adds (decision,
/// outcome); an unreadable part is left out, never guessed at.
pub(super) fn with_prefix(value: Value, prefix: &str) -> Value {
    let (decision, outcome) = split_prefix(prefix);
    let value = match decision {
        Some(d) => match d.strip_suffix("+dry_run") {
            Some(d) => chain::decided_value(value, d, true),
            None => chain::decided_value(value, d, false),
        },
        None => value,
    };
    match outcome_of(outcome) {
        Some(outcome) => chain::settled_value(value, outcome),
        None => value,
    }
}

/// The prefix an entry appended undecided takes when decided as `decision`.
pub(super) fn decision_prefix(decision: &str, dry_run: bool) -> String {
    if dry_run {
        format!("{decision}+dry_run|")
    } else {
        format!("{decision}|")
    }
}

/// The entry of an element's `<entry JSON>`, as written (pending), with its seq.
pub(super) fn pending_entry(seq: u64, json: &str) -> Option<Value> {
    // Straight into policy's value (the visitor `From<serde_json::Value>` runs too), no
    // intermediate JSON tree.
    let value: Value = serde_json::from_str(json).ok()?;
    Some(with_seq(value, seq))
}

/// `value`, an entry as written (seq 0: the seq is reserved as it is appended), with `seq`.
pub(super) fn with_seq(mut value: Value, seq: u64) -> Value {
    if let Ok(map) = value.as_object_mut() {
        map.insert(Value::from("seq"), Value::from(seq));
    }
    value
}

pub(super) fn span_text(span: SpanRef) -> String {
    format!(
        "{}{}",
        hex::encode(span.trace_id),
        hex::encode(span.span_id)
    )
}

pub(super) fn span_of(text: &str) -> Option<SpanRef> {
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    hex::decode_to_slice(text.get(..32)?, &mut trace_id).ok()?;
    hex::decode_to_slice(text.get(32..48)?, &mut span_id).ok()?;
    Some(SpanRef { trace_id, span_id })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;
    use toolgate_policy::chain::Action;

    use crate::state::redis::ms;

    #[test]
    fn an_entry_appended_undecided_reads_its_decision_and_outcome_from_its_prefix() {
        let json = r#"{"action":"ledger.post","decision":"pending","pending":true,"seq":0}"#;
        let read = |prefix: &str| entry_of(&format!("7\t{prefix}\t{json}")).unwrap();
        // In flight: as written.
        let v = read("");
        assert_eq!(v["decision"], Value::from("pending"));
        assert_eq!(v["pending"], Value::from(true));
        assert_eq!(v["seq"], Value::from(7u64));
        // Decided (a denial, before its answer), then settled.
        let v = read(&decision_prefix("deny", false));
        assert_eq!(v["decision"], Value::from("deny"));
        assert_eq!(v["pending"], Value::from(true));
        assert!(!is_settled(&decision_prefix("deny", false)));
        let v = read("deny|refused:403");
        assert_eq!(v["decision"], Value::from("deny"));
        assert_eq!(v["status"], Value::from(403u64));
        assert!(is_settled("deny|refused:403"));
        // A plain allow, written with its outcome; a dry-run would-deny.
        let v = read("allow|response:200");
        assert_eq!(v["decision"], Value::from("allow"));
        assert_eq!(v["pending"], Value::from(false));
        let v = read("deny+dry_run|response:200");
        assert_eq!(v["dry_run"], Value::from(true));
        // A decision that is none of ours is never taken: the entry stays as written.
        let v = read("root|response:200");
        assert_eq!(v["decision"], Value::from("pending"));
        assert_eq!(v["status"], Value::from(200u64));
    }

    #[test]
    fn outcomes_round_trip_through_their_text() {
        for o in [
            Outcome::Response(200),
            Outcome::Refused(403),
            Outcome::AgentDisconnected,
            Outcome::UpstreamError,
            Outcome::Timeout,
        ] {
            assert_eq!(outcome_of(&outcome_text(o)), Some(o));
        }
        assert_eq!(outcome_of(""), None);
        assert_eq!(outcome_of("response:"), None);
    }

    #[test]
    fn an_element_becomes_the_entry_policy_sees() {
        let attrs = vec![(Arc::from("n"), json!(12345678901234567890u64))];
        let action = Action {
            action: "ticket.read",
            tool: Some("jira"),
            agent: "agent-b",
            decision: "allow",
            dry_run: false,
            attributes: &attrs,
            labels: &[],
            at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        };
        let json = serde_json::to_string(&chain::entry_value(&action, 0)).unwrap();
        let pending = entry_of(&format!("7\t\t{json}")).unwrap();
        assert_eq!(pending["seq"], Value::from(7u64));
        assert_eq!(pending["pending"], Value::from(true));
        assert_eq!(pending["agent"], Value::from("agent-b"));
        // Large numbers in attributes survive: the JSON is never re-encoded by a script.
        assert_eq!(
            pending["attributes"]["n"],
            Value::from(json!(12345678901234567890u64))
        );
        let done = entry_of(&format!("7\tresponse:201\t{json}")).unwrap();
        assert_eq!(done["pending"], Value::from(false));
        assert_eq!(done["status"], Value::from(201u64));
        assert_eq!(done["outcome"], Value::from("response"));
        assert!(entry_of("x\t\t{}").is_none());
        assert!(entry_of("1\t\tnot json").is_none());
        // What a sidecar holds for the entry it appended (built, never decoded) is what any
        // other sidecar decodes from the element.
        let attrs = vec![
            (Arc::from("n"), json!(12345678901234567890u64)),
            (Arc::from("s"), json!("a\t\"b\"")),
            (Arc::from("o"), json!({"k": [1, 2.5, null, true]})),
        ];
        let action = Action {
            decision: "pending",
            attributes: &attrs,
            ..action
        };
        let json = serde_json::to_string(&chain::entry_value(&action, 0)).unwrap();
        assert_eq!(
            entry_of(&format!("7\t\t{json}")).unwrap(),
            chain::entry_value(&action, 7)
        );
    }

    #[test]
    fn spans_round_trip_and_labels_expire() {
        let span = SpanRef {
            trace_id: [7; 16],
            span_id: [9; 8],
        };
        assert_eq!(span_of(&span_text(span)), Some(span));
        assert_eq!(span_of(""), None);
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let old = ms(now - Duration::from_secs(120));
        let fresh = ms(now - Duration::from_secs(10));
        let set = label_set(
            vec![
                ("pii".into(), format!("{fresh}\tcrm.lookup")),
                ("old".into(), format!("{old}\tcrm.lookup")),
                ("bad".into(), "no tab".into()),
            ],
            Some((Duration::from_secs(60), now)),
        );
        assert!(set.contains("pii") && !set.contains("old") && !set.contains("bad"));
    }
}
