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
        agent_label_ttl: Duration::from_secs(86_400),
        require_task_token: false,
        ended_retention: Duration::from_secs(86_400),
    }
}

fn t(id: &str) -> TaskKey<'_> {
    TaskKey::named(id)
}

fn act<'a>(name: &'a str, attrs: &'a [(Arc<str>, Json)]) -> Action<'a> {
    Action {
        action: name,
        tool: Some("jira"),
        agent: "agent-a",
        decision: "allow",
        dry_run: false,
        attributes: attrs,
        labels: &[],
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
    assert_eq!(l.record(&t("T-1"), &act("ticket.read", &[])), 1);
    assert_eq!(l.record(&t("T-2"), &act("payment.create", &[])), 1);
    assert_eq!(l.record(&t("T-1"), &act("ticket.close", &[])), 2);
    let h = l.history(&t("T-1"));
    assert_eq!(actions(&h), ["ticket.read", "ticket.close"]);
    assert_eq!(h[0]["seq"], Value::from(1u64));
    assert_eq!(h[0]["pending"], Value::from(true));
    assert_eq!(h[0]["status"], Value::Undefined);
    assert_eq!(h[0]["agent"], Value::from("agent-a"));
    assert_eq!(actions(&l.history(&t("T-2"))), ["payment.create"]);
    assert_eq!(actions(&l.history(&t("T-3"))), Vec::<String>::new());
}

#[test]
fn status_is_recorded_when_the_response_arrives() {
    let l = Ledger::new(&settings(8, 100, Duration::from_secs(60)));
    let seq = l.record(
        &t("T"),
        &act("ticket.read", &[(Arc::from("issue"), json!("SUP-7"))]),
    );
    l.settle(&t("T"), seq, Outcome::Response(200));
    let h = l.history(&t("T"));
    assert_eq!(h[0]["status"], Value::from(200u64));
    assert_eq!(h[0]["outcome"], Value::from("response"));
    assert_eq!(h[0]["pending"], Value::from(false));
    assert_eq!(h[0]["attributes"]["issue"], Value::from("SUP-7"));
    assert_eq!(h[0]["decision"], Value::from("allow"));
}

#[test]
fn a_task_keeps_only_its_last_max_actions() {
    let l = Ledger::new(&settings(3, 100, Duration::from_secs(60)));
    for i in 0..10 {
        l.record(&t("T"), &act(&format!("a{i}"), &[]));
    }
    assert_eq!(actions(&l.history(&t("T"))), ["a7", "a8", "a9"]);
    assert_eq!(l.history(&t("T"))[2]["seq"], Value::from(10u64));
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
        l.record(&t(&format!("task-{i}")), &act("x", &[]));
    }
    let stats = l.stats();
    assert!(stats.tasks <= 64, "{stats:?}");
    assert!(stats.entries <= 64 * 4, "{stats:?}");
    // The most recent task survived; the first was evicted.
    assert_eq!(actions(&l.history(&t("task-99999"))), ["x"]);
    assert!(actions(&l.history(&t("task-0"))).is_empty());
}

#[test]
fn recently_used_tasks_survive_eviction() {
    // Two tasks per shard: a churn task landing in the kept task's shard evicts the older
    // churn task there, never the kept one, which was used just before (placement is keyed,
    // so which shard that is varies from run to run).
    let l = Ledger::new(&settings(4, 2 * SHARDS, Duration::from_secs(600)));
    l.record(&t("keep"), &act("first", &[]));
    for i in 0..1_000 {
        l.record(&t("keep"), &act("again", &[]));
        l.record(&t(&format!("churn-{i}")), &act("x", &[]));
    }
    assert!(!actions(&l.history(&t("keep"))).is_empty());
}

#[test]
fn idle_tasks_start_over() {
    let l = Ledger::new(&settings(4, 100, Duration::from_millis(1)));
    l.record(&t("T"), &act("old", &[]));
    std::thread::sleep(Duration::from_millis(5));
    assert!(actions(&l.history(&t("T"))).is_empty());
    assert_eq!(l.record(&t("T"), &act("new", &[])), 1);
    assert_eq!(actions(&l.history(&t("T"))), ["new"]);
}

#[test]
fn oversized_attributes_are_replaced_by_a_marker() {
    let l = Ledger::new(&settings(4, 100, Duration::from_secs(60)));
    let big = [(Arc::from("blob"), json!("x".repeat(MAX_ATTRIBUTE_WEIGHT)))];
    l.record(&t("T"), &act("upload", &big));
    assert_eq!(
        l.history(&t("T"))[0]["attributes"]["_truncated"],
        Value::from(true)
    );
}

#[test]
fn dry_run_entries_are_marked() {
    let l = Ledger::new(&settings(4, 100, Duration::from_secs(60)));
    l.record(
        &t("T"),
        &Action {
            dry_run: true,
            decision: "deny",
            ..act("payment.create", &[])
        },
    );
    let h = l.history(&t("T"));
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
    l.record(&t("T"), &act(&name, &[]));
    let stored = l.history(&t("T"))[0]["action"]
        .as_string()
        .unwrap()
        .to_string();
    assert!(stored.len() <= MAX_NAME_BYTES && name.starts_with(&stored));
}

#[test]
fn each_action_learns_the_span_of_the_previous_action_of_its_task() {
    let l = Ledger::new(&settings(2, 100, Duration::from_secs(60)));
    let span = |n: u8| SpanRef {
        trace_id: [n; 16],
        span_id: [n; 8],
    };
    let first = l.record_linked(&t("T-1"), &act("a", &[]), span(1));
    assert_eq!((first.seq, first.previous), (1, None));
    let other = l.record_linked(&t("T-2"), &act("a", &[]), span(9));
    assert_eq!((other.seq, other.previous), (1, None));
    let second = l.record_linked(&t("T-1"), &act("b", &[]), span(2));
    assert_eq!((second.seq, second.previous), (2, Some(span(1))));
    // The link survives the entry itself falling out of the bounded history.
    let third = l.record_linked(&t("T-1"), &act("c", &[]), span(3));
    assert_eq!((third.seq, third.previous), (3, Some(span(2))));
    // An action recorded without a span breaks the link rather than skipping over it.
    assert_eq!(l.record(&t("T-1"), &act("d", &[])), 4);
    assert_eq!(
        l.record_linked(&t("T-1"), &act("e", &[]), span(5)).previous,
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
    l.record_linked(&t("T-1"), &act("a", &[]), span);
    std::thread::sleep(Duration::from_millis(5));
    let again = l.record_linked(&t("T-1"), &act("a", &[]), span);
    assert_eq!((again.seq, again.previous), (1, None));
}

fn verified(id: &str) -> TaskKey<'_> {
    TaskKey {
        id,
        verified: true,
        began: None,
    }
}

#[test]
fn an_entry_settles_once_on_its_first_outcome() {
    let l = Ledger::new(&settings(8, 100, Duration::from_secs(60)));
    let seq = l.record(&t("T"), &act("ticket.read", &[]));
    l.settle(&t("T"), seq, Outcome::Response(404));
    // A later account (the agent hanging up after the answer) does not rewrite it.
    l.settle(&t("T"), seq, Outcome::AgentDisconnected);
    let h = l.history(&t("T"));
    assert_eq!(h[0]["outcome"], Value::from("response"));
    assert_eq!(h[0]["status"], Value::from(404u64));
    let seq = l.record(&t("T"), &act("ticket.read", &[]));
    l.settle(&t("T"), seq, Outcome::AgentDisconnected);
    let h = l.history(&t("T"));
    assert_eq!(h[1]["outcome"], Value::from("agent_disconnected"));
    assert_eq!(
        h[1]["status"],
        Value::Undefined,
        "no status without an answer"
    );
    let seq = l.record(&t("T"), &act("ticket.close", &[]));
    l.settle(&t("T"), seq, Outcome::Refused(403));
    assert_eq!(l.history(&t("T"))[2]["outcome"], Value::from("refused"));
}

#[test]
fn labels_outlive_the_window_and_reach_the_agent_in_every_task() {
    let l = Ledger::new(&settings(2, 100, Duration::from_secs(60)));
    let now = SystemTime::now();
    let pii = [Arc::from("pii")];
    l.record(
        &t("T"),
        &Action {
            labels: &pii,
            at: now,
            ..act("crm.lookup_customer", &[])
        },
    );
    for _ in 0..10 {
        l.record(&t("T"), &act("harmless", &[]));
    }
    let v = l.view(&t("T"), "agent-a", now);
    assert_eq!(actions(&v.chain), ["harmless", "harmless"]);
    assert_eq!(
        v.task_labels["pii"]["by"],
        Value::from("crm.lookup_customer")
    );
    assert!(!v.history_complete, "the window cut the history");
    // Another task of the same agent: no task label, but the agent's.
    let other = l.view(&t("T-other"), "agent-a", now);
    assert_eq!(
        other.task_labels,
        Value::from(std::collections::BTreeMap::new())
    );
    assert_eq!(
        other.agent_labels["pii"]["by"],
        Value::from("crm.lookup_customer")
    );
    assert!(other.history_complete);
    // Another agent has none.
    assert_eq!(
        l.view(&t("T"), "agent-b", now).agent_labels,
        Value::from(std::collections::BTreeMap::new())
    );
}

#[test]
fn tasks_the_agent_names_cannot_evict_verified_tasks() {
    let l = Ledger::new(&settings(4, 64, Duration::from_secs(600)));
    l.record(&verified("T-orchestrated"), &act("ticket.read", &[]));
    // The agent names as many tasks as it likes, including the verified task's id.
    for i in 0..10_000 {
        l.record(&t(&format!("flood-{i}")), &act("x", &[]));
    }
    l.record(&t("T-orchestrated"), &act("forged", &[]));
    assert_eq!(
        actions(&l.history(&verified("T-orchestrated"))),
        ["ticket.read"],
        "the verified task is intact and its namesake is another task"
    );
    assert_eq!(actions(&l.history(&t("T-orchestrated"))), ["forged"]);
}

#[test]
fn an_evicted_task_that_comes_back_says_its_history_was_cut() {
    let l = Ledger::new(&settings(4, SHARDS, Duration::from_secs(600)));
    let now = SystemTime::now();
    l.record(&t("victim"), &act("ticket.read", &[]));
    assert!(l.view(&t("victim"), "a", now).history_complete);
    // Churn until it is evicted (placement is keyed, so which churn does it varies), then
    // stop: well within the remembered evictions (TOMBSTONES_PER_TASK per task slot).
    for i in 0..10_000 {
        if actions(&l.history(&t("victim"))).is_empty() {
            break;
        }
        l.record(&t(&format!("churn-{i}")), &act("x", &[]));
    }
    let back = l.view(&t("victim"), "a", now);
    assert!(actions(&back.chain).is_empty());
    assert!(!back.history_complete);
    l.record(&t("victim"), &act("again", &[]));
    assert!(!l.view(&t("victim"), "a", now).history_complete);
    // A task never seen is complete.
    assert!(l.view(&t("never-seen"), "a", now).history_complete);
}

#[test]
fn a_task_that_began_before_this_process_has_an_incomplete_history() {
    let l = Ledger::new(&settings(4, 100, Duration::from_secs(600)));
    let now = SystemTime::now();
    let old = TaskKey {
        id: "T-old",
        verified: true,
        began: Some(now - Duration::from_secs(3600)),
    };
    let fresh = TaskKey {
        id: "T-new",
        verified: true,
        began: Some(now),
    };
    assert!(!l.view(&old, "a", now).history_complete);
    assert!(l.view(&fresh, "a", now).history_complete);
    l.record(&old, &act("x", &[]));
    assert!(!l.view(&old, "a", now).history_complete);
}

#[test]
fn placement_is_keyed_per_process() {
    // Two ledgers place the same ids differently (with overwhelming probability), so an
    // agent cannot compute which ids share a victim's shard.
    let a = Ledger::new(&settings(4, 1_600, Duration::from_secs(600)));
    let b = Ledger::new(&settings(4, 1_600, Duration::from_secs(600)));
    let ids: Vec<String> = (0..64).map(|i| format!("task-{i}")).collect();
    let shard = |l: &Ledger, id: &str| l.keys.hash_one(id) % SHARDS as u64;
    let same = ids
        .iter()
        .filter(|id| shard(&a, id) == shard(&b, id))
        .count();
    assert!(same < 32, "{same} of 64 ids landed in the same shard twice");
}
