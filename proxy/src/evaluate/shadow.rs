//! The shadow policy on the data path: evaluated right after the live one, on the same input
//! value (a refcounted clone — no second input is built), and never consulted for what is
//! forwarded. A disagreement is kept in the decided action for the record stage: a
//! decision-log line marked `shadow`, `toolgate_shadow_disagreements_total`, and an event on
//! the action's span.

use std::sync::Arc;
use std::time::{Duration, Instant};

use toolgate_policy::classify::Tool;
use toolgate_policy::evaluate::{Decision, Policy, Value};
use toolgate_policy::shadow::{self, Differences, Verdict};

use crate::gateway::Snapshot;

/// The live and the shadow decision on one request, where they differ.
#[derive(Debug, Clone)]
pub struct Disagreement {
    pub live: Verdict,
    pub shadow: Verdict,
    /// What differs: `effect`, `credential`, `approval`, `labels`.
    pub differs: Differences,
    /// The shadow policy's revision.
    pub revision: Arc<str>,
    /// How long the shadow took.
    pub eval_time: Duration,
    /// When the shadow finished.
    pub at: Instant,
}

/// Decide `input` with `shadow` as the live policy decided it (`approved`: the request
/// matched an approved approval, which satisfies a decision that asks for one); `Some` when
/// the two disagree.
pub fn compare(
    snapshot: &Snapshot,
    shadow: &Policy,
    tool: Option<&Tool>,
    live: &Decision,
    input: Value,
    approved: bool,
) -> Option<Box<Disagreement>> {
    let started = Instant::now();
    let mut decision = shadow.decide(input);
    let at = Instant::now();
    if approved {
        decision = decision.satisfied_by_approval();
    }
    let config = &snapshot.config;
    if !shadow::disagree(config, tool, live, &decision) {
        return None;
    }
    let live = Verdict::of(config, tool, live);
    let verdict = Verdict::of(config, tool, &decision);
    Some(Box::new(Disagreement {
        differs: live.differences(&verdict),
        live,
        shadow: verdict,
        revision: Arc::from(shadow.revision()),
        eval_time: at.duration_since(started),
        at,
    }))
}
