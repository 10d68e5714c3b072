//! Delegation: an agent hands its task, or part of it, to another agent. Handing over is an
//! action like any other (`task.delegate`, decided by policy); on allow the delegating
//! toolgate signs a delegation token, which the receiving agent sends to its own toolgate as
//! its task token. This module holds the pure parts of both sides:
//!
//! - the request (`POST http://toolgate.internal/delegate`, [`parse_request`]) and what it
//!   may grant ([`Own`], [`grant`]): never more than the delegator holds itself;
//! - the token's claims ([`Claims`]): `iss`, `sub` = `aud` = the receiving agent, `task`,
//!   `actions`, `scope`, `depth`, `act` (RFC 8693 §4.1, one level per agent the task passed
//!   through), `task_verified`, `traceparent`, and `parent` — the delegator's own delegation
//!   token, when it was itself delegated, so a receiver can check every hop;
//! - on the receiving side, [`Delegation::from_claims`]: the token is for this agent, its
//!   chain is well formed, and no hop widened what the one before it held
//!   ([`DelegationError`]); then [`Delegation::allows`] refuses actions outside it before
//!   policy runs, and [`Delegation::annotate`] shows it to policy as `input.task.delegation`.
//!
//! Bounds: at most [`MAX_ITEMS`] actions and scopes, names of at most [`MAX_NAME`] bytes,
//! agent ids of at most [`MAX_AGENT`] bytes, at most [`MAX_DEPTH`] hops (a token also stays
//! under the 8 KiB every JWT is held to, `config::MAX_TOKEN_BYTES`).

mod receive;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

pub use receive::{Delegation, DelegationError};

use crate::config::is_scope;

/// The action a delegation request is decided as.
pub const ACTION: &str = "task.delegate";
/// toolgate's own host on the proxy listener: no tool may be catalogued there.
pub const HOST: &str = "toolgate.internal";
/// The delegation endpoint's path on [`HOST`].
pub const PATH: &str = "/delegate";
/// Most hops a task may be handed on: each embeds the one before (`parent`), and a fifth
/// would pass the 8 KiB every JWT is held to with ids of typical length.
pub const MAX_DEPTH: u64 = 4;
/// Most actions, and most scopes, one delegation carries.
pub const MAX_ITEMS: usize = 64;
/// Longest action or scope name.
pub const MAX_NAME: usize = 128;
/// Longest agent id.
pub const MAX_AGENT: usize = 512;

/// What the delegating agent asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The receiving agent's id (its token's `sub` and `aud`).
    pub to: String,
    pub actions: Vec<String>,
    pub scopes: Vec<String>,
    /// How long the delegation should last (capped by `delegation.max_ttl` and by the
    /// delegator's own task token).
    pub ttl: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    to: String,
    actions: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    ttl: Option<String>,
}

/// Why a delegation request was refused before policy (a 400 the agent can fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{HOST} serves only POST http://{HOST}{PATH}")]
    Endpoint,
    #[error("the body must be a JSON object like {{\"to\": \"spiffe://…/agent-b\", \"actions\": [\"ticket.read\"], \"scopes\": [], \"ttl\": \"10m\"}}: {0}")]
    Json(String),
    #[error("\"to\" must be the receiving agent's id: 1 to {MAX_AGENT} visible ASCII characters")]
    BadAgent,
    #[error("\"actions\" must name at least one action to hand on")]
    NoActions,
    #[error("at most {MAX_ITEMS} {0} may be delegated at once")]
    TooMany(&'static str),
    #[error("{0:?} is not an action name (1 to {MAX_NAME} visible ASCII characters, no quotes)")]
    BadAction(String),
    #[error("{0:?} is not a scope token (1 to {MAX_NAME} visible ASCII characters, no quotes)")]
    BadScope(String),
    #[error("ttl {0:?} is not a duration like 10m or 1h (at least 1s)")]
    BadTtl(String),
}

fn name_ok(s: &str) -> bool {
    s.len() <= MAX_NAME && is_scope(s)
}

/// Whether `id` may name an agent: 1 to [`MAX_AGENT`] visible ASCII characters.
pub fn agent_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_AGENT && id.bytes().all(|b| b.is_ascii_graphic())
}

/// At most 64 characters of agent input, quoted, for a message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parse and check a delegation request body. Any bytes give `Ok` or a [`RequestError`].
pub fn parse_request(body: &[u8]) -> Result<Request, RequestError> {
    let raw: RawRequest =
        serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
    if !agent_ok(&raw.to) {
        return Err(RequestError::BadAgent);
    }
    if raw.actions.is_empty() {
        return Err(RequestError::NoActions);
    }
    if raw.actions.len() > MAX_ITEMS {
        return Err(RequestError::TooMany("actions"));
    }
    if raw.scopes.len() > MAX_ITEMS {
        return Err(RequestError::TooMany("scopes"));
    }
    if let Some(bad) = raw.actions.iter().find(|a| !name_ok(a)) {
        return Err(RequestError::BadAction(clip(bad)));
    }
    if let Some(bad) = raw.scopes.iter().find(|s| !name_ok(s)) {
        return Err(RequestError::BadScope(clip(bad)));
    }
    let ttl = match raw.ttl {
        None => None,
        Some(text) => match humantime::parse_duration(text.trim()) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            _ => return Err(RequestError::BadTtl(clip(&text))),
        },
    };
    Ok(Request {
        to: raw.to,
        actions: dedup(raw.actions),
        scopes: dedup(raw.scopes),
        ttl,
    })
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// What the delegating task holds itself, read from its verified task token: a delegated
/// task holds exactly its token's `actions` and `scope`; an orchestrator's token restricts
/// only when it carries them (`None`: unrestricted).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Own {
    pub actions: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    /// The delegator's depth (0: the task came from an orchestrator, or was named).
    pub depth: u64,
    /// The delegator's task was named by an orchestrator's token (transitively).
    pub task_verified: bool,
    /// When the delegator's task token expires, if it has one.
    pub expires: Option<u64>,
}

fn strings(v: Option<&Json>) -> Option<Vec<String>> {
    let items = v?.as_array()?;
    items
        .iter()
        .map(|i| i.as_str().map(str::to_string))
        .collect()
}

fn scopes_of(v: Option<&Json>) -> Option<Vec<String>> {
    v?.as_str().map(|s| {
        s.split(' ')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    })
}

impl Own {
    /// What a task holds, from its verified task token's claims (`None`: no token).
    pub fn of(claims: Option<&Json>, verified: bool) -> Own {
        let Some(claims) = claims else {
            return Own::default();
        };
        let depth = claims.get("depth").and_then(Json::as_u64).unwrap_or(0);
        let delegated = depth > 0;
        Own {
            actions: strings(claims.get("actions")).or(delegated.then(Vec::new)),
            scopes: scopes_of(claims.get("scope")).or(delegated.then(Vec::new)),
            depth,
            task_verified: if delegated {
                claims.get("task_verified") == Some(&Json::Bool(true))
            } else {
                verified
            },
            expires: claims.get("exp").and_then(Json::as_u64),
        }
    }
}

/// What a delegation grants, once narrowed to what the delegator holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub actions: Vec<String>,
    pub scopes: Vec<String>,
    /// Requested actions and scopes the delegator does not hold (left out).
    pub dropped: Vec<String>,
    /// The receiving task's depth (the delegator's plus one).
    pub depth: u64,
}

/// Why a delegation cannot be granted at all (before policy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("none of the requested actions ({0}) is held by this task's own delegation; a task can only hand on what it holds")]
    NothingHeld(String),
    #[error("this task is already {0} hops from where it started, the most toolgate delegates ({MAX_DEPTH})")]
    TooDeep(u64),
    #[error("an agent cannot delegate to itself: its own delegation token would launder the task")]
    ToSelf,
    #[error("the delegation token would be {0} bytes, more than the {max} receivers accept: the task has been handed on too often", max = crate::config::MAX_TOKEN_BYTES)]
    TooLong(usize),
}

/// What `request` may grant, from a task that holds `own`, as agent `me`: the intersection.
pub fn grant(request: &Request, own: &Own, me: &str) -> Result<Grant, GrantError> {
    if request.to == me {
        return Err(GrantError::ToSelf);
    }
    if own.depth >= MAX_DEPTH {
        return Err(GrantError::TooDeep(own.depth));
    }
    let held = |limit: &Option<Vec<String>>, item: &String| {
        limit.as_ref().is_none_or(|l| l.contains(item))
    };
    let mut dropped = Vec::new();
    let mut actions = Vec::new();
    for a in &request.actions {
        if held(&own.actions, a) {
            actions.push(a.clone());
        } else {
            dropped.push(a.clone());
        }
    }
    let mut scopes = Vec::new();
    for s in &request.scopes {
        if held(&own.scopes, s) {
            scopes.push(s.clone());
        } else {
            dropped.push(s.clone());
        }
    }
    if actions.is_empty() {
        return Err(GrantError::NothingHeld(request.actions.join(", ")));
    }
    Ok(Grant {
        actions,
        scopes,
        dropped,
        depth: own.depth + 1,
    })
}

/// Seconds since the epoch.
pub fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// When a delegation issued at `now` for `ttl` (default and cap `max_ttl`) expires: never
/// after the delegator's own task token (`own_expires`), and at least a second from now.
pub fn expiry(now: u64, ttl: Option<Duration>, max_ttl: Duration, own_expires: Option<u64>) -> u64 {
    let ttl = ttl.map_or(max_ttl, |t| t.min(max_ttl)).as_secs().max(1);
    let mut exp = now.saturating_add(ttl);
    if let Some(cap) = own_expires {
        exp = exp.min(cap.max(now.saturating_add(1)));
    }
    exp
}

/// The `act` claim of a delegation from `delegator`, whose task token has `claims`: the
/// delegator, then the chain it holds — its own delegation's `act`, or, for an orchestrator's
/// token, that token's `act`, else its subject (the user or orchestrator the task came from).
pub fn act(delegator: &str, claims: Option<&Json>) -> Json {
    let prior = claims.and_then(|c| {
        let act = c.get("act").filter(|a| a.is_object()).cloned();
        let delegated = c.get("depth").is_some();
        if act.is_some() || delegated {
            return act;
        }
        let sub = c.get("sub").and_then(Json::as_str)?;
        (sub != delegator).then(|| json!({ "sub": sub }))
    });
    let mut out = Map::new();
    out.insert("sub".into(), Json::String(delegator.to_string()));
    if let Some(prior) = prior {
        out.insert("act".into(), prior);
    }
    Json::Object(out)
}

/// The claims of a delegation token, in the order they are serialised.
#[derive(Debug, Serialize)]
pub struct Claims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a str,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: &'a str,
    pub task: &'a str,
    pub actions: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub depth: u64,
    pub task_verified: bool,
    pub act: &'a Json,
    /// The delegate action's span (W3C `traceparent`): the receiving toolgate's spans join
    /// the task's trace under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
    /// The delegator's own delegation token, when it was itself delegated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<&'a str>,
}
