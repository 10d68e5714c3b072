use std::time::{Duration, UNIX_EPOCH};

use http::HeaderName;
use serde_json::json;

use super::*;

fn settings(max_actions: usize, max_tasks: usize, idle_ttl: Duration) -> ChainSettings {
    ChainSettings {
        task_header: HeaderName::from_static("x-toolgate-task"),
        max_actions,
        max_tasks,
        idle_ttl,
    }
}

fn act<'a>(name: &'a str, attrs: &'a [(Arc<str>, Json)]) -> Action<'a> {
    Action {
        action: name,
        tool: Some("jira"),
        decision: "allow",
        dry_run: false,
        attributes: attrs,
        at: UNIX_EPOCH,
    }
}

fn actions(history: &Value) -> Vec<String> {
    history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_string().unwrap().to_string())
        .collect()
}

#[test]
fn history_is_per_task_oldest_first_with_sequence_numbers() {
    let l = Ledger::new(&settings(8, 100, Duration::from_secs(60)));
    assert_eq!(l.record("T-1", &act("ticket.read", &[])), 1);
    assert_eq!(l.record("T-2", &act("payment.create", &[])), 1);
    assert_eq!(l.record("T-1", &act("ticket.close", &[])), 2);
    let h = l.history("T-1");
    assert_eq!(actions(&h), ["ticket.read", "ticket.close"]);
    assert_eq!(h[0]["seq"], Value::from(1u64));
    assert_eq!(h[0]["status"], Value::Null);
    assert_eq!(actions(&l.history("T-2")), ["payment.create"]);
    assert_eq!(actions(&l.history("T-3")), Vec::<String>::new());
}

#[test]
fn status_is_recorded_when_the_response_arrives() {
    let l = Ledger::new(&settings(8, 100, Duration::from_secs(60)));
    let seq = l.record(
        "T",
        &act("ticket.read", &[(Arc::from("issue"), json!("SUP-7"))]),
    );
    l.complete("T", seq, 200);
    let h = l.history("T");
    assert_eq!(h[0]["status"], Value::from(200u64));
    assert_eq!(h[0]["attributes"]["issue"], Value::from("SUP-7"));
    assert_eq!(h[0]["decision"], Value::from("allow"));
}

#[test]
fn a_task_keeps_only_its_last_max_actions() {
    let l = Ledger::new(&settings(3, 100, Duration::from_secs(60)));
    for i in 0..10 {
        l.record("T", &act(&format!("a{i}"), &[]));
    }
    assert_eq!(actions(&l.history("T")), ["a7", "a8", "a9"]);
    assert_eq!(l.history("T")[2]["seq"], Value::from(10u64));
    assert_eq!(
        l.stats(),
        Stats {
            tasks: 1,
            entries: 3
        }
    );
}

#[test]
fn task_count_is_capped_with_lru_eviction() {
    let l = Ledger::new(&settings(4, 64, Duration::from_secs(600)));
    for i in 0..100_000 {
        l.record(&format!("task-{i}"), &act("x", &[]));
    }
    let stats = l.stats();
    assert!(stats.tasks <= 64, "{stats:?}");
    assert!(stats.entries <= 64 * 4, "{stats:?}");
    // The most recent task survived; the first was evicted.
    assert_eq!(actions(&l.history("task-99999")), ["x"]);
    assert!(actions(&l.history("task-0")).is_empty());
}

#[test]
fn recently_used_tasks_survive_eviction() {
    let l = Ledger::new(&settings(4, SHARDS, Duration::from_secs(600)));
    l.record("keep", &act("first", &[]));
    for i in 0..1_000 {
        l.record("keep", &act("again", &[]));
        l.record(&format!("churn-{i}"), &act("x", &[]));
    }
    assert!(!actions(&l.history("keep")).is_empty());
}

#[test]
fn idle_tasks_start_over() {
    let l = Ledger::new(&settings(4, 100, Duration::from_millis(1)));
    l.record("T", &act("old", &[]));
    std::thread::sleep(Duration::from_millis(5));
    assert!(actions(&l.history("T")).is_empty());
    assert_eq!(l.record("T", &act("new", &[])), 1);
    assert_eq!(actions(&l.history("T")), ["new"]);
}

#[test]
fn oversized_attributes_are_replaced_by_a_marker() {
    let l = Ledger::new(&settings(4, 100, Duration::from_secs(60)));
    let big = [(Arc::from("blob"), json!("x".repeat(MAX_ATTRIBUTE_WEIGHT)))];
    l.record("T", &act("upload", &big));
    assert_eq!(
        l.history("T")[0]["attributes"]["_truncated"],
        Value::from(true)
    );
}

#[test]
fn dry_run_entries_are_marked() {
    let l = Ledger::new(&settings(4, 100, Duration::from_secs(60)));
    l.record(
        "T",
        &Action {
            dry_run: true,
            decision: "deny",
            ..act("payment.create", &[])
        },
    );
    let h = l.history("T");
    assert_eq!(h[0]["dry_run"], Value::from(true));
    assert_eq!(h[0]["decision"], Value::from("deny"));
}

#[test]
fn attribute_weight_is_pessimistic_about_small_numbers() {
    let numbers = json!((0..100).collect::<Vec<_>>());
    assert!(attribute_weight("n", &numbers) > numbers.to_string().len() * 10);
    assert_eq!(attribute_weight("k", &json!("abc")), 2 * 64 + 1 + 64 + 3);
}

#[test]
fn long_names_are_cut() {
    let l = Ledger::new(&settings(4, 100, Duration::from_secs(60)));
    let name = "é".repeat(MAX_NAME_BYTES);
    l.record("T", &act(&name, &[]));
    let stored = l.history("T")[0]["action"].as_string().unwrap().to_string();
    assert!(stored.len() <= MAX_NAME_BYTES && name.starts_with(&stored));
}

#[test]
fn each_action_learns_the_span_of_the_previous_action_of_its_task() {
    let l = Ledger::new(&settings(2, 100, Duration::from_secs(60)));
    let span = |n: u8| SpanRef {
        trace_id: [n; 16],
        span_id: [n; 8],
    };
    let first = l.record_linked("T-1", &act("a", &[]), span(1));
    assert_eq!((first.seq, first.previous), (1, None));
    let other = l.record_linked("T-2", &act("a", &[]), span(9));
    assert_eq!((other.seq, other.previous), (1, None));
    let second = l.record_linked("T-1", &act("b", &[]), span(2));
    assert_eq!((second.seq, second.previous), (2, Some(span(1))));
    // The link survives the entry itself falling out of the bounded history.
    let third = l.record_linked("T-1", &act("c", &[]), span(3));
    assert_eq!((third.seq, third.previous), (3, Some(span(2))));
    // An action recorded without a span breaks the link rather than skipping over it.
    assert_eq!(l.record("T-1", &act("d", &[])), 4);
    assert_eq!(
        l.record_linked("T-1", &act("e", &[]), span(5)).previous,
        None
    );
}

#[test]
fn a_task_that_starts_over_forgets_its_last_span() {
    let l = Ledger::new(&settings(8, 100, Duration::from_millis(1)));
    let span = SpanRef {
        trace_id: [1; 16],
        span_id: [1; 8],
    };
    l.record_linked("T-1", &act("a", &[]), span);
    std::thread::sleep(Duration::from_millis(5));
    let again = l.record_linked("T-1", &act("a", &[]), span);
    assert_eq!((again.seq, again.previous), (1, None));
}
