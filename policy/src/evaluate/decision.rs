//! The decision a policy returns (DESIGN.md §5): a boolean, or an object with `allow`,
//! `reason`, `credential`, `approval` and `labels`. Absent fields take safe defaults;
//! anything malformed denies. A decision that asks for approval denies, whatever `allow`
//! says, until a human approves the identical request (`crate::approval`).

use std::sync::Arc;
use std::time::Duration;

use regorus::Value;

use crate::approval::{self, Ask};
use crate::labels::is_label;

/// What happens to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
    /// The policy failed (error, undefined result, malformed decision, limit): denied.
    Error,
}

impl Effect {
    /// `allow`, `deny` or `error`, as logs and spans name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Error => "error",
        }
    }
}

/// The credential an allowing decision asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialGrant {
    /// A credential name from config; `None` means the tool's default.
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub ttl: Option<Duration>,
}

/// A decision with its obligations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    /// Shown to the agent as the problem's `detail`.
    pub reason: String,
    pub credential: CredentialGrant,
    /// The policy asks a human to approve this request first ("deny unless a human
    /// approves"): the effect is `Deny` until the proxy finds an approval for it.
    pub approval: Option<Ask>,
    /// Labels the decision sets on the task and the agent (`"labels": ["pii"]`).
    pub labels: Vec<Arc<str>>,
    /// Internal detail of a policy error, for logs only.
    pub error: Option<String>,
}

/// Reason given when the policy hit its instruction or time budget.
pub const LIMIT_EXCEEDED: &str = "policy limit exceeded";

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// The decision for a request that matched an approved approval: one that asked for
    /// approval now allows (the approval satisfies it); anything else stands as policy said.
    pub fn satisfied_by_approval(mut self) -> Decision {
        if self.effect == Effect::Deny && self.approval.is_some() {
            self.effect = Effect::Allow;
        }
        self
    }

    /// The effect as fixtures and `toolgate eval` name it: `approval` for a decision that
    /// waits for a human, else [`Effect::as_str`].
    pub fn outcome(&self) -> &'static str {
        match (self.effect, &self.approval) {
            (Effect::Deny, Some(_)) => "approval",
            (effect, _) => effect.as_str(),
        }
    }

    /// The labels this decision sets on its task and agent: the decision's own, and — when
    /// the action is forwarded — those the catalog gives the action (`labels_of`).
    pub fn labels_to_set(&self, catalog_labels: &[Arc<str>], forwarded: bool) -> Vec<Arc<str>> {
        let mut out = self.labels.clone();
        if forwarded {
            for label in catalog_labels {
                if !out.contains(label) {
                    out.push(label.clone());
                }
            }
        }
        out
    }

    /// A denial for `reason` that did not come from the policy (unknown credential, revoked…).
    pub fn deny(reason: impl Into<String>) -> Decision {
        Decision {
            effect: Effect::Deny,
            reason: reason.into(),
            credential: CredentialGrant::default(),
            approval: None,
            labels: Vec::new(),
            error: None,
        }
    }

    /// A policy failure: denied, with `detail` kept for logs.
    pub fn error(reason: impl Into<String>, detail: impl Into<String>) -> Decision {
        Decision {
            effect: Effect::Error,
            error: Some(detail.into()),
            ..Decision::deny(reason)
        }
    }

    /// Interpret an evaluation result.
    pub fn from_result(result: Result<Value, String>) -> Decision {
        match result {
            Ok(value) => Decision::from_value(&value),
            Err(e) if is_limit(&e) => Decision::error(LIMIT_EXCEEDED, e),
            Err(e) => Decision::error("policy evaluation failed", e),
        }
    }

    fn from_value(value: &Value) -> Decision {
        match value {
            Value::Bool(true) => Decision {
                effect: Effect::Allow,
                ..Decision::deny("allowed by policy")
            },
            Value::Bool(false) => Decision::deny("denied by policy"),
            Value::Undefined => Decision::error(
                "policy produced no decision",
                "the decision rule is undefined",
            ),
            Value::Object(_) => match parse_object(value) {
                Ok(d) => d,
                Err(e) => Decision::error("policy returned a malformed decision", e),
            },
            other => Decision::error(
                "policy returned a malformed decision",
                format!("expected a boolean or an object, got {}", kind(other)),
            ),
        }
    }
}

fn is_limit(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    e.contains("limit exceeded") || e.contains("time limit") || e.contains("instruction limit")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    }
}

fn string(v: &Value, field: &str) -> Result<Option<String>, String> {
    match v {
        Value::Undefined | Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.to_string())),
        other => Err(format!("{field} must be a string, got {}", kind(other))),
    }
}

fn parse_object(v: &Value) -> Result<Decision, String> {
    let allow = match &v["allow"] {
        Value::Undefined | Value::Null => false,
        Value::Bool(b) => *b,
        other => return Err(format!("allow must be a boolean, got {}", kind(other))),
    };
    let approval = parse_approval(&v["approval"])?;
    let credential = match &v["credential"] {
        Value::Undefined | Value::Null => CredentialGrant::default(),
        c @ Value::Object(_) => parse_credential(c)?,
        other => return Err(format!("credential must be an object, got {}", kind(other))),
    };
    let reason = string(&v["reason"], "reason")?;
    let labels = parse_labels(&v["labels"])?;
    let (effect, default_reason) = match (allow, approval.is_some()) {
        (_, true) => (Effect::Deny, "human approval required"),
        (true, false) => (Effect::Allow, "allowed by policy"),
        (false, false) => (Effect::Deny, "denied by policy"),
    };
    Ok(Decision {
        effect,
        reason: reason.unwrap_or_else(|| default_reason.to_string()),
        credential,
        approval,
        labels,
        error: None,
    })
}

/// `approval`: absent, `"required"`, or `{required, approvers, ttl, reason, wait}` (an object
/// with `required: false` asks for nothing). Unknown keys are malformed: a misspelt `tll`
/// must not silently take the default.
fn parse_approval(v: &Value) -> Result<Option<Ask>, String> {
    let map = match v {
        Value::Undefined | Value::Null => return Ok(None),
        Value::String(s) if &**s == "required" => return Ok(Some(Ask::default())),
        Value::String(s) => {
            return Err(format!(
                "approval must be \"required\" or an object, got {:?}",
                &**s
            ))
        }
        Value::Object(map) => map,
        other => {
            return Err(format!(
                "approval must be \"required\" or an object, got {}",
                kind(other)
            ))
        }
    };
    for key in map.keys() {
        match key {
            Value::String(k)
                if matches!(&**k, "required" | "approvers" | "ttl" | "reason" | "wait") => {}
            other => {
                return Err(format!(
                    "approval: unknown key {other} (required, approvers, ttl, reason, wait)"
                ))
            }
        }
    }
    match &v["required"] {
        Value::Bool(true) => {}
        Value::Bool(false) => return Ok(None),
        Value::Undefined => return Err("approval.required must be true or false".into()),
        other => {
            return Err(format!(
                "approval.required must be a boolean, got {}",
                kind(other)
            ))
        }
    }
    let approvers: Vec<String> = match &v["approvers"] {
        Value::Undefined | Value::Null => Vec::new(),
        Value::Array(items) => strings(items.iter(), "approval.approvers")?,
        Value::Set(items) => strings(items.iter(), "approval.approvers")?,
        other => {
            return Err(format!(
                "approval.approvers must be an array, got {}",
                kind(other)
            ))
        }
    };
    if approvers.len() > approval::MAX_APPROVERS {
        return Err(format!(
            "approval.approvers: at most {} names",
            approval::MAX_APPROVERS
        ));
    }
    if let Some(bad) = approvers.iter().find(|a| !approval::valid_name(a)) {
        return Err(format!(
            "approval.approvers: {bad:?} is not a name (1 to {} bytes, no control characters)",
            approval::MAX_APPROVER_BYTES
        ));
    }
    let duration = |field: &str| -> Result<Option<std::time::Duration>, String> {
        match string(&v[field], &format!("approval.{field}"))? {
            None => Ok(None),
            Some(t) => {
                let d = humantime::parse_duration(t.trim())
                    .map_err(|e| format!("approval.{field} {t:?}: {e}"))?;
                Ok(Some(d))
            }
        }
    };
    let ttl = duration("ttl")?;
    if ttl.is_some_and(|t| t < approval::MIN_TTL) {
        return Err("approval.ttl must be at least 1s".into());
    }
    let wait = duration("wait")?.filter(|w| !w.is_zero());
    let reason = string(&v["reason"], "approval.reason")?;
    if reason
        .as_ref()
        .is_some_and(|r| r.len() > approval::MAX_REASON_BYTES)
    {
        return Err(format!(
            "approval.reason: at most {} bytes",
            approval::MAX_REASON_BYTES
        ));
    }
    Ok(Some(Ask {
        approvers,
        ttl,
        reason,
        wait,
    }))
}

fn strings<'v>(items: impl Iterator<Item = &'v Value>, field: &str) -> Result<Vec<String>, String> {
    items
        .map(|s| match s {
            Value::String(s) => Ok(s.to_string()),
            other => Err(format!("{field} must hold strings, got {}", kind(other))),
        })
        .collect()
}

fn parse_labels(v: &Value) -> Result<Vec<Arc<str>>, String> {
    let items: Vec<&Value> = match v {
        Value::Undefined | Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items.iter().collect(),
        Value::Set(items) => items.iter().collect(),
        other => return Err(format!("labels must be an array, got {}", kind(other))),
    };
    let mut labels: Vec<Arc<str>> = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) if is_label(s) => {
                if !labels.iter().any(|l| **l == **s) {
                    labels.push(Arc::from(&**s));
                }
            }
            Value::String(s) => {
                return Err(format!(
                    "labels: {s:?} is not a label (1 to 64 of A-Z a-z 0-9 _ . : - /)"
                ))
            }
            other => return Err(format!("labels must hold strings, got {}", kind(other))),
        }
    }
    if labels.len() > crate::labels::MAX_LABELS {
        return Err(format!(
            "labels: at most {} per decision",
            crate::labels::MAX_LABELS
        ));
    }
    Ok(labels)
}

fn parse_credential(c: &Value) -> Result<CredentialGrant, String> {
    let name = string(&c["name"], "credential.name")?;
    let scopes: Vec<String> = match &c["scopes"] {
        Value::Undefined | Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|s| match s {
                Value::String(s) => Ok(s.to_string()),
                other => Err(format!(
                    "credential.scopes must hold strings, got {}",
                    kind(other)
                )),
            })
            .collect::<Result<_, _>>()?,
        Value::Set(items) => items
            .iter()
            .map(|s| match s {
                Value::String(s) => Ok(s.to_string()),
                other => Err(format!(
                    "credential.scopes must hold strings, got {}",
                    kind(other)
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(format!(
                "credential.scopes must be an array, got {}",
                kind(other)
            ))
        }
    };
    if let Some(bad) = scopes.iter().find(|s| !crate::config::is_scope(s)) {
        return Err(format!(
            "credential.scopes: {bad:?} is not a scope token (no spaces or quotes)"
        ));
    }
    let ttl = match string(&c["ttl"], "credential.ttl")? {
        None => None,
        Some(t) => {
            Some(humantime::parse_duration(&t).map_err(|e| format!("credential.ttl {t:?}: {e}"))?)
        }
    };
    Ok(CredentialGrant { name, scopes, ttl })
}
