//! Comparing two policies' decisions on the same input: the shadow policy beside the live one
//! on every request (`policy.shadow`), and `toolgate replay` re-deciding recorded inputs with a
//! candidate. Both compare what a decision *does* — its effect, the credential an allowed
//! request carries, the approval it asks for and the labels it sets — never its wording: a
//! reworded `reason` is not a disagreement.
//!
//! A [`Verdict`] is that comparable part of a decision, as the decision log writes it (both
//! decisions of a shadow disagreement; the live decision beside a recorded `input`) and as
//! replay reads it back.

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::classify::Tool;
use crate::config::Config;
use crate::credential;
use crate::evaluate::{Decision, Effect};

/// What a decision does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ruling {
    Allow,
    Deny,
    /// The policy failed (or named a credential the request cannot carry): denied.
    Error,
    /// Denied until a human approves the identical request.
    Approval,
}

impl Ruling {
    /// `allow`, `deny`, `error` or `approval`, as metrics, logs and `toolgate eval` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Ruling::Allow => "allow",
            Ruling::Deny => "deny",
            Ruling::Error => "error",
            Ruling::Approval => "approval",
        }
    }
}

/// The credential an allowed request carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The configured credential: the decision's, else the tool's default.
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// As the decision wrote it, normalised (`60s` and `1m` are one ttl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// The comparable part of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub effect: Ruling,
    pub reason: String,
    /// Only when allowed and a credential is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Grant>,
    /// What the decision asks a human for (`required`, `approvers`, `ttl`, `reason`, `wait`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Json>,
    /// The labels the decision itself sets, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// Where two verdicts differ, in a fixed order: `effect`, `credential` (of two allows),
/// `approval`, `labels`.
pub type Differences = Vec<&'static str>;

impl Verdict {
    /// The verdict of `decision` for a request to `tool`, with its credential resolved as the
    /// proxy resolves it: an allow naming a credential the request cannot carry is an error.
    pub fn of(config: &Config, tool: Option<&Tool>, decision: &Decision) -> Verdict {
        let mut effect = ruling(decision);
        let mut reason = decision.reason.clone();
        let credential = match effect {
            Ruling::Allow => match credential::select(config, tool, &decision.credential) {
                Ok(selected) => selected.map(|s| Grant {
                    name: s.name.to_string(),
                    scopes: decision.credential.scopes.clone(),
                    ttl: decision
                        .credential
                        .ttl
                        .map(|t| humantime::format_duration(t).to_string()),
                }),
                Err(e) => {
                    effect = Ruling::Error;
                    reason = e.to_string();
                    None
                }
            },
            _ => None,
        };
        let mut labels: Vec<String> = decision.labels.iter().map(|l| l.to_string()).collect();
        labels.sort();
        Verdict {
            effect,
            reason,
            credential,
            approval: decision
                .approval
                .as_ref()
                .map(crate::approval::Ask::to_json),
            labels,
        }
    }

    /// Where `self` and `other` differ; empty when they agree.
    pub fn differences(&self, other: &Verdict) -> Differences {
        let mut out = Vec::new();
        if self.effect != other.effect {
            out.push("effect");
        }
        // An allow against anything else differs in effect; its credential goes with it.
        if self.effect == other.effect && self.credential != other.credential {
            out.push("credential");
        }
        if self.approval != other.approval {
            out.push("approval");
        }
        if self.labels != other.labels {
            out.push("labels");
        }
        out
    }
}

fn ruling(decision: &Decision) -> Ruling {
    match (decision.effect, &decision.approval) {
        (Effect::Allow, _) => Ruling::Allow,
        (Effect::Deny, Some(_)) => Ruling::Approval,
        (Effect::Deny, None) => Ruling::Deny,
        (Effect::Error, _) => Ruling::Error,
    }
}

/// Whether the live and shadow decisions on one request disagree — exactly when their
/// verdicts differ — without building either verdict (the common case on the request path).
pub fn disagree(config: &Config, tool: Option<&Tool>, live: &Decision, shadow: &Decision) -> bool {
    let (live_ruling, live_name) = effective(config, tool, live);
    let (shadow_ruling, shadow_name) = effective(config, tool, shadow);
    live_ruling != shadow_ruling
        || live_name != shadow_name
        || live.approval != shadow.approval
        || !same_labels(&live.labels, &shadow.labels)
        || (live_name.is_some()
            && (live.credential.scopes != shadow.credential.scopes
                || live.credential.ttl != shadow.credential.ttl))
}

/// The ruling once the credential is resolved, and the credential an allow carries.
fn effective<'c>(
    config: &'c Config,
    tool: Option<&Tool>,
    decision: &Decision,
) -> (Ruling, Option<&'c str>) {
    match ruling(decision) {
        Ruling::Allow => match credential::select(config, tool, &decision.credential) {
            Ok(selected) => (Ruling::Allow, selected.map(|s| s.name)),
            Err(_) => (Ruling::Error, None),
        },
        other => (other, None),
    }
}

fn same_labels(a: &[std::sync::Arc<str>], b: &[std::sync::Arc<str>]) -> bool {
    a.len() == b.len() && a.iter().all(|l| b.contains(l))
}

/// How a candidate's verdict changes a recorded one (`toolgate replay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Unchanged,
    /// Allowed before, not now (denied, held for approval, or a policy error).
    NewlyDenied,
    /// Not allowed before, allowed now.
    NewlyAllowed,
    /// Allowed both times, with another credential (name, scopes or ttl).
    ChangedCredential,
    /// Anything else that differs: deny ↔ approval ↔ error, the approval asked for, or the
    /// labels set.
    Changed,
}

impl Change {
    /// Classify `candidate` against `recorded`.
    pub fn of(recorded: &Verdict, candidate: &Verdict) -> Change {
        let was = recorded.effect == Ruling::Allow;
        let is = candidate.effect == Ruling::Allow;
        match (was, is) {
            (true, false) => Change::NewlyDenied,
            (false, true) => Change::NewlyAllowed,
            _ if recorded.differences(candidate).is_empty() => Change::Unchanged,
            (true, true) if recorded.credential != candidate.credential => {
                Change::ChangedCredential
            }
            _ => Change::Changed,
        }
    }

    /// The name summaries and `--json` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Unchanged => "unchanged",
            Change::NewlyDenied => "newly_denied",
            Change::NewlyAllowed => "newly_allowed",
            Change::ChangedCredential => "changed_credential",
            Change::Changed => "changed",
        }
    }
}
