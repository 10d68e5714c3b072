//! The open task roots' memory bound, measured with a counting allocator: 100,000 distinct
//! tasks with the longest ids and more labels than a root keeps, through a store of 1,024
//! roots, never hold more heap than `roots::worst_case_bytes` documents. One test in this
//! binary, so nothing else allocates while it measures.
#![allow(
    unsafe_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../../policy/tests/support/counting.rs"]
mod counting;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use toolgate_policy::chain::Outcome;

use counting::live;
use toolgate_proxy::record::trace::roots::{
    worst_case_bytes, Counted, Roots, Step, MAX_LABELS, MAX_LABEL_BYTES, MAX_TASK_BYTES,
};

#[test]
fn open_roots_stay_within_the_documented_worst_case() {
    const MAX_OPEN: usize = 1024;
    let before = live();
    let roots = Roots::new(MAX_OPEN, Duration::from_secs(3600));
    let mut peak = 0isize;
    let mut evicted = 0usize;
    for i in 0..100_000u32 {
        let mut trace = [0u8; 16];
        trace[..4].copy_from_slice(&i.to_be_bytes());
        // The longest task id, and labels of the longest name, fresh for every task (nothing
        // shared with another root), more than a root keeps.
        let task = format!("{i:0>width$}", width = MAX_TASK_BYTES);
        let labels: Vec<Arc<str>> = (0..MAX_LABELS + 8)
            .map(|l| Arc::from(format!("{l:0>width$}", width = MAX_LABEL_BYTES)))
            .collect();
        let step = Step {
            trace_id: trace,
            task: &task,
            agent: "spiffe://example.org/ns/agents/sa/triage-agent",
            started: SystemTime::now(),
            ended: SystemTime::now(),
        };
        let entered = roots
            .enter(
                &step,
                [Counted {
                    decision: "allow",
                    outcome: Some(Outcome::Response(200)),
                    labels: &labels,
                }],
            )
            .unwrap();
        evicted += usize::from(entered.evicted.is_some());
        drop(entered);
        drop(labels);
        drop(task);
        if i % 97 == 0 || i >= 99_000 {
            peak = peak.max(live() - before);
        }
    }
    assert_eq!(roots.len(), MAX_OPEN);
    assert_eq!(evicted, 100_000 - MAX_OPEN);
    let bound = worst_case_bytes(MAX_OPEN) as isize;
    assert!(
        peak <= bound,
        "{peak} bytes live with {MAX_OPEN} roots open; documented bound {bound}"
    );
    // The bound is not vacuous: the roots do hold most of their budget.
    assert!(peak >= bound / 8, "{peak} of {bound}");
    let left = roots.drain();
    assert_eq!(left.len(), MAX_OPEN);
}
