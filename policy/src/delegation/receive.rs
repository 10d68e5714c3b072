//! The receiving side of a delegation: a verified task token that carries `depth` is a
//! delegation; it must be for this agent and well formed, and — handed on more than once —
//! follow from its `parent` hop by hop ([`Delegation::from_claims`]). Then it bounds what the
//! agent may do in the task ([`Delegation::allows`], [`Delegation::narrow`]) and is shown to
//! policy as `input.task.delegation` ([`Delegation::annotate`]).

use regorus::Value;
use serde_json::{json, Map, Value as Json};

use super::{clip, name_ok, scopes_of, strings, ACTION, MAX_DEPTH, MAX_ITEMS};
use crate::config::{TaskTokens, TokenError};

/// A task's delegation, as its verified delegation token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// Hops from where the task started (1: handed on once).
    pub depth: u64,
    /// Every agent the task passed through, in order, ending with this one.
    pub agents: Vec<String>,
    /// The only actions this agent may take in the task.
    pub actions: Vec<String>,
    /// The only scopes its credentials may carry.
    pub scopes: Vec<String>,
    /// Who signed the delegation (the delegating toolgate's issuer).
    pub issuer: String,
    /// Whether an orchestrator's token named the task where it started.
    pub task_verified: bool,
}

/// Why a delegation token was refused (shown to the agent; it never echoes the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    #[error("is a delegation to {0:?}, not to this agent")]
    NotForThisAgent(String),
    #[error("is a malformed delegation: {0}")]
    Malformed(&'static str),
    #[error("is a delegation {0} hops deep, more than the {MAX_DEPTH} toolgate accepts")]
    TooDeep(u64),
    #[error("has a parent delegation that {0}")]
    Parent(TokenError),
    #[error("has a parent delegation from issuer {0:?}, which is not trusted")]
    UntrustedParent(String),
    #[error("widens its parent delegation: {0}")]
    Widened(String),
    #[error("does not follow from its parent delegation: {0}")]
    Broken(&'static str),
}

fn field<'a>(claims: &'a Map<String, Json>, name: &str) -> Option<&'a Json> {
    claims.get(name)
}

/// The subjects of an `act` chain, outermost first (at most `limit`).
fn actors(act: Option<&Json>, limit: usize) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor = act;
    while let Some(a) = cursor {
        if out.len() >= limit {
            break;
        }
        let sub = a.get("sub").and_then(Json::as_str)?;
        out.push(sub.to_string());
        cursor = a.get("act");
    }
    Some(out)
}

impl Delegation {
    /// The delegation a verified task token's `claims` carries, as received by agent `me`:
    /// `Ok(None)` for a token that is not a delegation (no `depth`). A delegation must be for
    /// this agent, well formed, and — when handed on more than once — follow from its
    /// `parent` hop by hop, each verified (signature, expiry) against the trusted `issuers`.
    pub fn from_claims(
        claims: &Map<String, Json>,
        me: &str,
        issuers: &TaskTokens,
    ) -> Result<Option<Delegation>, DelegationError> {
        let Some(depth) = field(claims, "depth") else {
            return Ok(None);
        };
        let depth = depth
            .as_u64()
            .filter(|d| *d >= 1)
            .ok_or(DelegationError::Malformed(
                "`depth` must be a whole number from 1",
            ))?;
        if depth > MAX_DEPTH {
            return Err(DelegationError::TooDeep(depth));
        }
        let sub = field(claims, "sub")
            .and_then(Json::as_str)
            .ok_or(DelegationError::Malformed(
                "no `sub` naming the receiving agent",
            ))?;
        if sub != me {
            return Err(DelegationError::NotForThisAgent(clip(sub)));
        }
        let view = Hop::read(claims)?;
        let agents_before = actors(field(claims, "act"), usize::try_from(depth).unwrap_or(0))
            .filter(|a| a.len() as u64 == depth)
            .ok_or(DelegationError::Malformed(
                "`act` must name one delegating agent per hop",
            ))?;
        match (depth, field(claims, "parent")) {
            (1, None) => {}
            (1, Some(_)) => return Err(DelegationError::Malformed("a first hop has no `parent`")),
            (_, Some(Json::String(parent))) => check_parent(&view, parent, issuers)?,
            (_, _) => {
                return Err(DelegationError::Malformed(
                    "a delegation handed on again must carry its `parent`",
                ))
            }
        }
        let mut agents: Vec<String> = agents_before.into_iter().rev().collect();
        agents.push(sub.to_string());
        Ok(Some(Delegation {
            depth,
            agents,
            actions: view.actions,
            scopes: view.scopes,
            issuer: view.iss,
            task_verified: view.task_verified,
        }))
    }

    /// Whether this delegation lets the agent take `action`. Handing the task on
    /// (`task.delegate`) is always a decision for policy: it can only pass on a subset.
    pub fn allows(&self, action: &str) -> bool {
        action == ACTION || self.actions.iter().any(|a| a == action)
    }

    /// Only the scopes this delegation carries, of `scopes`.
    pub fn narrow(&self, scopes: &mut Vec<String>) {
        scopes.retain(|s| self.scopes.contains(s));
    }

    /// `input.task.delegation`, as JSON.
    pub fn to_json(&self) -> Json {
        json!({
            "depth": self.depth,
            "agents": self.agents,
            "actions": self.actions,
            "scopes": self.scopes,
            "issuer": self.issuer,
        })
    }

    /// Set `input.task.delegation` in the input document `input`.
    pub fn annotate(&self, input: &mut Value) {
        let value = Value::from(self.to_json());
        let task = input
            .as_object_mut()
            .ok()
            .and_then(|map| map.get_mut(&Value::from("task")))
            .and_then(|task| task.as_object_mut().ok());
        if let Some(task) = task {
            task.insert(Value::from("delegation"), value);
        }
    }
}

/// One hop of a delegation, as its claims say.
#[derive(Debug, Clone)]
struct Hop {
    iss: String,
    sub: String,
    task: String,
    exp: u64,
    depth: u64,
    actions: Vec<String>,
    scopes: Vec<String>,
    act: Option<Json>,
    task_verified: bool,
}

impl Hop {
    fn read(claims: &Map<String, Json>) -> Result<Hop, DelegationError> {
        let text = |name: &'static str| field(claims, name).and_then(Json::as_str);
        let actions = strings(field(claims, "actions"))
            .filter(|a| !a.is_empty() && a.len() <= MAX_ITEMS && a.iter().all(|x| name_ok(x)))
            .ok_or(DelegationError::Malformed(
                "`actions` must list 1 to 64 action names",
            ))?;
        let scopes = match field(claims, "scope") {
            None => Vec::new(),
            Some(v) => scopes_of(Some(v))
                .filter(|s| s.len() <= MAX_ITEMS && s.iter().all(|x| name_ok(x)))
                .ok_or(DelegationError::Malformed(
                    "`scope` must be space-separated scopes",
                ))?,
        };
        Ok(Hop {
            iss: text("iss").unwrap_or_default().to_string(),
            sub: text("sub").unwrap_or_default().to_string(),
            task: text("task")
                .ok_or(DelegationError::Malformed("no `task`"))?
                .to_string(),
            exp: field(claims, "exp").and_then(Json::as_u64).unwrap_or(0),
            depth: field(claims, "depth").and_then(Json::as_u64).unwrap_or(0),
            actions,
            scopes,
            act: field(claims, "act").cloned(),
            task_verified: field(claims, "task_verified") == Some(&Json::Bool(true)),
        })
    }
}

/// Verify `parent` (a delegation token) as the hop before `child`: signed by a trusted
/// issuer and current, for the agent that delegated `child`, in the same task, one hop
/// shallower, and holding everything `child` holds; then its own parent, the same way.
fn check_parent(child: &Hop, parent: &str, issuers: &TaskTokens) -> Result<(), DelegationError> {
    let unverified = crate::config::unverified_claims(parent).map_err(DelegationError::Parent)?;
    let iss = unverified
        .get("iss")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let issuer = issuers
        .issuers
        .iter()
        .find(|i| i.issuer == iss)
        .ok_or_else(|| DelegationError::UntrustedParent(clip(iss)))?;
    // The parent was for the delegating agent, not for this one: its audience is checked
    // below against the chain, not against this toolgate's configured audience.
    let mut validation = issuer.validation.clone();
    validation.validate_aud = false;
    validation.aud = None;
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    let claims = issuer
        .keys
        .verify(parent, &validation)
        .map_err(DelegationError::Parent)?;
    let hop = Hop::read(&claims)?;
    let delegator = child
        .act
        .as_ref()
        .and_then(|a| a.get("sub"))
        .and_then(Json::as_str)
        .unwrap_or_default();
    if hop.sub != delegator {
        return Err(DelegationError::Broken(
            "its parent was not for the agent that delegated it",
        ));
    }
    let aud_ok = match claims.get("aud") {
        Some(Json::String(a)) => *a == hop.sub,
        Some(Json::Array(a)) => a.iter().any(|x| x.as_str() == Some(hop.sub.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err(DelegationError::Broken(
            "its parent's audience is not its subject",
        ));
    }
    if hop.task != child.task {
        return Err(DelegationError::Broken("its parent is for another task"));
    }
    if hop.depth.checked_add(1) != Some(child.depth) {
        return Err(DelegationError::Broken(
            "its depth is not its parent's plus one",
        ));
    }
    if child.act.as_ref().and_then(|a| a.get("act")) != hop.act.as_ref() {
        return Err(DelegationError::Broken(
            "its actor chain is not its parent's with the delegator added",
        ));
    }
    if let Some(a) = child.actions.iter().find(|a| !hop.actions.contains(a)) {
        return Err(DelegationError::Widened(format!(
            "action {a:?} was not delegated to {}",
            clip(&hop.sub)
        )));
    }
    if let Some(s) = child.scopes.iter().find(|s| !hop.scopes.contains(s)) {
        return Err(DelegationError::Widened(format!(
            "scope {s:?} was not delegated to {}",
            clip(&hop.sub)
        )));
    }
    if child.exp > hop.exp {
        return Err(DelegationError::Widened(
            "it outlives its parent".to_string(),
        ));
    }
    if child.task_verified && !hop.task_verified {
        return Err(DelegationError::Widened(
            "it claims an orchestrator named the task, which its parent does not".to_string(),
        ));
    }
    match (hop.depth, claims.get("parent")) {
        (0, _) => Err(DelegationError::Malformed("a parent must be a delegation")),
        (1, None) => Ok(()),
        (1, Some(_)) => Err(DelegationError::Malformed("a first hop has no `parent`")),
        (_, Some(Json::String(grand))) => check_parent(&hop, grand, issuers),
        (_, _) => Err(DelegationError::Malformed(
            "a delegation handed on again must carry its `parent`",
        )),
    }
}
