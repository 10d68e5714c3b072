//! The chain ledger's memory bound, measured with a counting allocator: 100,000 distinct
//! tasks, then every task full of worst-case entries, never hold more heap than
//! `chain::worst_case_bytes` documents. One test in this binary, so nothing else allocates
//! while it measures.
#![allow(
    unsafe_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/counting.rs"]
mod counting;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderName;
use serde_json::{json, Value as Json};
use toolgate_policy::chain::{self, Action, Ledger, Outcome, TaskKey, MAX_ATTRIBUTE_WEIGHT};

use counting::live;
use toolgate_policy::config::ChainSettings;
use toolgate_policy::labels;

/// Attribute sets that each come close to the weight budget in different shapes: the
/// estimator must be pessimistic for all of them.
fn heavy_attributes() -> Vec<Vec<(Arc<str>, Json)>> {
    let ints: Vec<Json> = (0..12).map(|i| json!(i)).collect();
    let keys: serde_json::Map<String, Json> = (0..4).map(|i| (format!("k{i}"), json!(i))).collect();
    vec![
        vec![(
            Arc::from("body"),
            json!("x".repeat(MAX_ATTRIBUTE_WEIGHT - 200)),
        )],
        vec![(Arc::from("list"), Json::Array(ints))],
        vec![(Arc::from("map"), Json::Object(keys))],
        vec![(Arc::from("deep"), json!({"a": {"b": [1, {"e": "f"}]}}))],
        (0..5)
            .map(|i| (Arc::from(format!("a{i}").as_str()), json!(i)))
            .collect(),
    ]
}

#[test]
fn ledger_heap_stays_within_the_documented_worst_case() {
    let settings = ChainSettings {
        task_header: HeaderName::from_static("x-toolgate-task"),
        max_actions: 64,
        max_tasks: 1_000,
        idle_ttl: Duration::from_secs(3600),
        agent_label_ttl: Duration::from_secs(86_400),
        require_task_token: false,
        ended_retention: Duration::from_secs(86_400),
    };
    let bound = chain::worst_case_bytes(&settings) as isize;
    let shapes = heavy_attributes();
    for attrs in &shapes {
        let w: usize = attrs
            .iter()
            .map(|(k, v)| chain::attribute_weight(k, v))
            .sum();
        assert!(w <= MAX_ATTRIBUTE_WEIGHT, "shape over budget: {w}");
    }
    let at = SystemTime::now();
    let labels: Vec<Arc<str>> = (0..labels::MAX_LABELS + 8)
        .map(|i| Arc::from(format!("label-{i:0>56}").as_str()))
        .collect();
    let act = |action, tool, attributes, labels| Action {
        action,
        tool,
        agent: "spiffe://example.org/ns/a-fairly-long-namespace/sa/an-agent-with-a-long-name",
        decision: "allow",
        dry_run: false,
        attributes,
        labels,
        at,
    };

    let before = live();
    let ledger = Ledger::new(&settings);
    // 100,000 distinct tasks, a few realistic entries each.
    let small = vec![(Arc::from("issue"), json!("SUP-7"))];
    for i in 0..100_000u64 {
        let task = format!("{:0>32x}", i * 7919);
        for action in ["ticket.read", "ticket.close"] {
            let key = TaskKey::named(&task);
            let seq = ledger.record(&key, &act(action, Some("jira"), &small, &[]));
            ledger.settle(&key, seq, Outcome::Response(200));
        }
    }
    let stats = ledger.stats();
    assert!(stats.tasks <= settings.max_tasks, "{stats:?}");
    let after_many = live() - before;
    assert!(
        after_many <= bound,
        "100,000 tasks hold {after_many} bytes, over the documented {bound}"
    );

    // Both pools: every task full of entries at the attribute budget, in every shape, with
    // long names, and with every label set (overflowing).
    let long_action = "a".repeat(200);
    for t in 0..settings.max_tasks * 2 {
        let task = format!("{t:0>128}");
        for verified in [false, true] {
            let key = TaskKey {
                id: &task,
                verified,
                began: None,
            };
            for n in 0..settings.max_actions {
                let attrs = &shapes[(t + n) % shapes.len()];
                let set = if n == 0 { &labels[..] } else { &[][..] };
                let seq = ledger.record(
                    &key,
                    &act(&long_action, Some("a-tool-with-a-long-name"), attrs, set),
                );
                ledger.settle(&key, seq, Outcome::Refused(403));
            }
        }
    }
    let stats = ledger.stats();
    assert!(stats.tasks <= 2 * settings.max_tasks, "{stats:?}");
    let full = live() - before;
    assert!(
        full <= bound,
        "a full ledger holds {full} bytes, over the documented {bound}"
    );
    println!(
        "ledger: {} tasks, {} entries, {full} bytes measured, bound {bound}",
        stats.tasks, stats.entries
    );
    drop(ledger);
    assert!(live() - before < 64 * 1024, "memory not released on drop");
}
