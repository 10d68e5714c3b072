//! The decision a policy returns (DESIGN.md §5): a boolean, or an object with `allow`,
//! `reason`, `credential` and `approval`. Absent fields take safe defaults; anything
//! malformed denies.

use std::sync::Arc;
use std::time::Duration;

use regorus::Value;

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
    /// The policy asked for human approval (reserved: denies for now).
    pub approval_required: bool,
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
            approval_required: false,
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
    let approval_required = match string(&v["approval"], "approval")?.as_deref() {
        None => false,
        Some("required") => true,
        Some(other) => {
            return Err(format!(
                "approval must be \"required\" when set, got {other:?}"
            ))
        }
    };
    let credential = match &v["credential"] {
        Value::Undefined | Value::Null => CredentialGrant::default(),
        c @ Value::Object(_) => parse_credential(c)?,
        other => return Err(format!("credential must be an object, got {}", kind(other))),
    };
    let reason = string(&v["reason"], "reason")?;
    let labels = parse_labels(&v["labels"])?;
    let (effect, default_reason) = match (allow, approval_required) {
        (_, true) => (Effect::Deny, "human approval required"),
        (true, false) => (Effect::Allow, "allowed by policy"),
        (false, false) => (Effect::Deny, "denied by policy"),
    };
    Ok(Decision {
        effect,
        reason: reason.unwrap_or_else(|| default_reason.to_string()),
        credential,
        approval_required,
        labels,
        error: None,
    })
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
