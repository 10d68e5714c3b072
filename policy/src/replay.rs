//! `toolgate replay`: recorded decisions decided again by a candidate policy.
//!
//! A decision-log line written with `telemetry.decision_log: { input: true }` carries the
//! policy `input` exactly as the live policy saw it and the live `decision` (a
//! [`Verdict`]). Replay groups the lines by task, orders each task's decisions as they were
//! made (`input.now`, then `seq`), and decides every recorded input again with the candidate —
//! **as recorded**: `input.chain`, the labels and `input.approval` are what the live policy saw,
//! so each result answers "what would the candidate have decided on that request, given what
//! had happened". Each is compared with the recorded decision ([`Change`]).
//!
//! Where the candidate decides an earlier action of the task otherwise, the history a later
//! decision saw would itself have been different. Replay then decides that later input a
//! second time, with the chain entries of the changed actions rewritten as the candidate
//! would have left them — `decision` set to the candidate's, and a newly refused action
//! `refused` with status 403 (toolgate's answer; the tool never saw it), a newly allowed one
//! `pending` with no status (the tool's answer to a request it never received cannot be
//! known) — and reports the decisions whose outcome depends on that history
//! ([`HistoryNote`]). Labels are replayed as recorded.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::classify::Tool;
use crate::config::Config;
use crate::evaluate::{Policy, Value};
use crate::shadow::{Change, Differences, Ruling, Verdict};

/// A log that cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{file}: {e}")]
    Read { file: String, e: std::io::Error },
    #[error("{file}:{line}: not a decision-log line: {e}")]
    Line {
        file: String,
        line: usize,
        e: serde_json::Error,
    },
}

/// One recorded decision that can be decided again.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub decision_id: String,
    pub trace_id: String,
    pub span_id: String,
    pub task: String,
    pub seq: u64,
    pub action: String,
    /// The revision of the policy that decided it.
    pub policy_revision: String,
    /// The policy input, as JSON.
    pub input: Json,
    /// The live decision.
    pub verdict: Verdict,
    /// Where it was read: `file:line`.
    pub origin: String,
}

/// What reading the logs found besides replayable decisions.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Skipped {
    /// Decision lines without `input` and `decision` (written without `input: true`).
    pub without_input: usize,
    /// Shadow lines (`shadow`): not decisions of their own.
    pub shadow_lines: usize,
    /// Lines seen before (the same `decision_id`).
    pub duplicates: usize,
}

/// The decision-log line fields replay reads.
#[derive(Debug, Deserialize)]
struct Line {
    decision_id: String,
    #[serde(default)]
    trace_id: String,
    #[serde(default)]
    span_id: String,
    #[serde(default)]
    task: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    action: String,
    #[serde(default)]
    policy_revision: String,
    input: Option<Json>,
    decision: Option<Verdict>,
    shadow: Option<Json>,
}

/// Read the decision-log lines of `reader` (named `file` in messages), adding the replayable
/// ones to `out`.
pub fn read_log(
    file: &str,
    reader: impl BufRead,
    out: &mut Vec<Recorded>,
    skipped: &mut Skipped,
) -> Result<(), ReplayError> {
    let mut seen: HashSet<String> = out.iter().map(|r| r.decision_id.clone()).collect();
    for (i, line) in reader.lines().enumerate() {
        let text = line.map_err(|e| ReplayError::Read {
            file: file.to_string(),
            e,
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| ReplayError::Line {
            file: file.to_string(),
            line: i + 1,
            e,
        })?;
        if line.shadow.is_some() {
            skipped.shadow_lines += 1;
            continue;
        }
        let (Some(input), Some(verdict)) = (line.input, line.decision) else {
            skipped.without_input += 1;
            continue;
        };
        if !seen.insert(line.decision_id.clone()) {
            skipped.duplicates += 1;
            continue;
        }
        out.push(Recorded {
            decision_id: line.decision_id,
            trace_id: line.trace_id,
            span_id: line.span_id,
            task: line.task,
            seq: line.seq,
            action: line.action,
            policy_revision: line.policy_revision,
            input,
            verdict,
            origin: format!("{file}:{}", i + 1),
        });
    }
    Ok(())
}

/// Decisions per action, by how the candidate changes them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub unchanged: usize,
    pub newly_denied: usize,
    pub newly_allowed: usize,
    pub changed_credential: usize,
    /// deny ↔ approval ↔ error, the approval asked for, or the labels set.
    pub changed: usize,
}

impl Counts {
    fn add(&mut self, change: Change) {
        match change {
            Change::Unchanged => self.unchanged += 1,
            Change::NewlyDenied => self.newly_denied += 1,
            Change::NewlyAllowed => self.newly_allowed += 1,
            Change::ChangedCredential => self.changed_credential += 1,
            Change::Changed => self.changed += 1,
        }
    }
}

/// One recorded decision the candidate decides otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub change: Change,
    pub differs: Differences,
    pub decision_id: String,
    pub trace_id: String,
    pub span_id: String,
    pub task: String,
    pub seq: u64,
    pub action: String,
    pub recorded: Verdict,
    pub candidate: Verdict,
    /// `file:line` of the decision-log line.
    pub origin: String,
}

/// A decision whose outcome under the candidate depends on history the candidate changed: as
/// recorded it decides `as_recorded`, with the candidate's earlier decisions in its chain
/// `with_candidate_history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryNote {
    pub decision_id: String,
    pub trace_id: String,
    pub task: String,
    pub seq: u64,
    pub action: String,
    /// The earlier actions of the task (by `seq`) the candidate decided otherwise.
    pub changed_before: Vec<u64>,
    pub as_recorded: Verdict,
    pub with_candidate_history: Verdict,
}

/// The result of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub replayed: usize,
    pub tasks: usize,
    pub skipped: Skipped,
    /// The revisions of the policies that made the recorded decisions.
    pub recorded_revisions: BTreeSet<String>,
    pub candidate_revision: String,
    /// Per action: how many decisions stayed and how many changed, by kind.
    pub actions: BTreeMap<String, Counts>,
    /// Every changed decision, task by task in order.
    pub changes: Vec<Changed>,
    /// Decisions that depend on history the candidate changed.
    pub history: Vec<HistoryNote>,
}

impl Report {
    /// Whether the candidate decides anything otherwise.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty() || !self.history.is_empty()
    }
}

/// An earlier decision of the task the candidate decided otherwise (for history rewriting).
struct Rewrite {
    at: Json,
    ruling: Ruling,
}

/// Decide every recorded decision again with `candidate` (see the module documentation).
pub fn replay(
    config: &Config,
    candidate: &Policy,
    recorded: Vec<Recorded>,
    skipped: Skipped,
) -> Report {
    let mut tasks: Vec<((String, bool), Vec<Recorded>)> = Vec::new();
    let mut index: HashMap<(String, bool), usize> = HashMap::new();
    for r in recorded {
        let key = (
            r.task.clone(),
            r.input.pointer("/task/verified") == Some(&Json::Bool(true)),
        );
        let i = *index.entry(key.clone()).or_insert_with(|| {
            tasks.push((key, Vec::new()));
            tasks.len() - 1
        });
        if let Some((_, list)) = tasks.get_mut(i) {
            list.push(r);
        }
    }
    let mut report = Report {
        replayed: 0,
        tasks: tasks.len(),
        skipped,
        recorded_revisions: BTreeSet::new(),
        candidate_revision: candidate.revision().to_string(),
        actions: BTreeMap::new(),
        changes: Vec::new(),
        history: Vec::new(),
    };
    for (_, mut decisions) in tasks {
        // As they were decided: `now` (second precision), then the chain's order.
        decisions.sort_by(|a, b| {
            let now = |r: &Recorded| {
                r.input
                    .get("now")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            now(a).cmp(&now(b)).then(a.seq.cmp(&b.seq))
        });
        let mut rewrites: BTreeMap<u64, Rewrite> = BTreeMap::new();
        for r in decisions {
            report.replayed += 1;
            report.recorded_revisions.insert(r.policy_revision.clone());
            let tool = tool_of(config, &r.input);
            let verdict = decide(config, candidate, tool, &r.input);
            let change = Change::of(&r.verdict, &verdict);
            report
                .actions
                .entry(r.action.clone())
                .or_default()
                .add(change);
            let rewritten = rewritten_chain(&r.input, &rewrites);
            if let Some((input, changed_before)) = rewritten {
                let again = decide(config, candidate, tool, &input);
                if again != verdict {
                    report.history.push(HistoryNote {
                        decision_id: r.decision_id.clone(),
                        trace_id: r.trace_id.clone(),
                        task: r.task.clone(),
                        seq: r.seq,
                        action: r.action.clone(),
                        changed_before,
                        as_recorded: verdict.clone(),
                        with_candidate_history: again,
                    });
                }
            }
            if verdict.effect != r.verdict.effect {
                rewrites.insert(
                    r.seq,
                    Rewrite {
                        at: r.input.get("now").cloned().unwrap_or(Json::Null),
                        ruling: verdict.effect,
                    },
                );
            }
            if change != Change::Unchanged {
                report.changes.push(Changed {
                    change,
                    differs: r.verdict.differences(&verdict),
                    decision_id: r.decision_id,
                    trace_id: r.trace_id,
                    span_id: r.span_id,
                    task: r.task,
                    seq: r.seq,
                    action: r.action,
                    recorded: r.verdict,
                    candidate: verdict,
                    origin: r.origin,
                });
            }
        }
    }
    report
}

/// The catalogued tool the input names (`input.action.tool`).
fn tool_of<'c>(config: &'c Config, input: &Json) -> Option<&'c Tool> {
    let name = input.pointer("/action/tool")?.as_str()?;
    config.catalog.tools().iter().find(|t| &*t.name == name)
}

/// The candidate's verdict on `input`, as the proxy decides: an input that carries
/// `approval` is the retry of an approved request, which satisfies a decision asking for one.
fn decide(config: &Config, candidate: &Policy, tool: Option<&Tool>, input: &Json) -> Verdict {
    let mut decision = candidate.decide(Value::from(input.clone()));
    if input.get("approval").is_some() {
        decision = decision.satisfied_by_approval();
    }
    Verdict::of(config, tool, &decision)
}

/// `input` with the chain entries of `rewrites` (matched by `seq` and `at`) as the candidate
/// would have left them, and the seqs rewritten; `None` when no entry is.
fn rewritten_chain(input: &Json, rewrites: &BTreeMap<u64, Rewrite>) -> Option<(Json, Vec<u64>)> {
    if rewrites.is_empty() {
        return None;
    }
    let mut input = input.clone();
    let chain = input.get_mut("chain")?.as_array_mut()?;
    let mut changed = Vec::new();
    for entry in chain.iter_mut() {
        let Some(seq) = entry["seq"].as_u64() else {
            continue;
        };
        let Some(rewrite) = rewrites.get(&seq).filter(|r| r.at == entry["at"]) else {
            continue;
        };
        let Some(fields) = entry.as_object_mut() else {
            continue;
        };
        let decision = match rewrite.ruling {
            Ruling::Allow => "allow",
            Ruling::Deny | Ruling::Approval => "deny",
            Ruling::Error => "error",
        };
        fields.insert("decision".into(), Json::from(decision));
        fields.remove("dry_run");
        if rewrite.ruling == Ruling::Allow {
            fields.insert("pending".into(), Json::Bool(true));
            fields.remove("outcome");
            fields.remove("status");
        } else {
            fields.insert("pending".into(), Json::Bool(false));
            fields.insert("outcome".into(), Json::from("refused"));
            fields.insert("status".into(), Json::from(403));
        }
        changed.push(seq);
    }
    (!changed.is_empty()).then_some((input, changed))
}
