//! Task tokens: a JWT the orchestrator gives the agent for one task, sent as
//! `x-toolgate-task-token`. It is verified against the configured issuers (signature by the
//! issuer's JWKS, `iss`, `aud`, `exp`/`nbf` with leeway); its claims become
//! `input.task.claims` and its task claim names the task. A token that does not verify is
//! refused with the reason — never ignored, never downgraded to "no token".
//!
//! A delegation token (another toolgate's, carrying `depth`, see
//! `toolgate_policy::delegation`) is a task token too: its task is its `task` claim, it must
//! be for this agent, and its chain of hops must hold ([`TaskTokenError::Delegation`]).

use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value as Json;
use toolgate_policy::config::{TaskTokens, TokenError};
use toolgate_policy::delegation::{Delegation, DelegationError};

use super::MAX_TASK_ID;

/// The header carrying a task token.
pub const HEADER: &str = "x-toolgate-task-token";

/// A verified task token.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskToken {
    /// The task its task claim names.
    pub task: String,
    /// All its claims (`input.task.claims`).
    pub claims: Arc<Json>,
    /// The delegation it carries, when it is a delegation token.
    pub delegation: Option<Arc<Delegation>>,
    /// The token itself, kept only for a delegation token: handing the task on again embeds
    /// it as the next token's `parent`.
    pub raw: Option<Arc<str>>,
}

/// Why a task token was refused; the message is the problem's detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskTokenError {
    #[error("task tokens are not accepted here: no task_tokens issuers are configured")]
    NotAccepted,
    #[error("send one {HEADER} header, not several")]
    Repeated,
    #[error("the task token {0}")]
    Invalid(TokenError),
    #[error("the task token names no issuer (`iss`)")]
    NoIssuer,
    #[error("the task token is from issuer {0:?}, which is not trusted")]
    UntrustedIssuer(String),
    #[error("the task token has no {0:?} claim naming the task")]
    NoTask(String),
    #[error("the task token's {0:?} claim must be 1 to {MAX_TASK_ID} visible ASCII characters")]
    BadTask(String),
    #[error("the delegation token {0}")]
    Delegation(DelegationError),
    #[error("{header} names task {given:?}, but the task token is for task {token:?}")]
    Conflict {
        header: String,
        given: String,
        token: String,
    },
}

/// Verify the request's task token, if it carries one, for agent `me`.
pub fn verify(
    headers: &HeaderMap,
    config: Option<&TaskTokens>,
    me: &str,
) -> Result<Option<TaskToken>, TaskTokenError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TaskTokenError::Repeated);
    }
    let config = config.ok_or(TaskTokenError::NotAccepted)?;
    let token = value
        .to_str()
        .map_err(|_| TaskTokenError::Invalid(TokenError::Malformed))?
        .trim();
    let unverified =
        toolgate_policy::config::unverified_claims(token).map_err(TaskTokenError::Invalid)?;
    let iss = unverified
        .get("iss")
        .and_then(Json::as_str)
        .ok_or(TaskTokenError::NoIssuer)?;
    let issuer = config
        .issuers
        .iter()
        .find(|i| i.issuer == iss)
        .ok_or_else(|| TaskTokenError::UntrustedIssuer(iss.to_string()))?;
    let claims = issuer
        .keys
        .verify(token, &issuer.validation)
        .map_err(TaskTokenError::Invalid)?;
    let delegation =
        Delegation::from_claims(&claims, me, config).map_err(TaskTokenError::Delegation)?;
    // A delegation names its task in `task`, whatever this toolgate's orchestrator uses.
    let task_claim = match delegation {
        Some(_) => "task",
        None => config.task_claim.as_str(),
    };
    let task = match claims.get(task_claim) {
        None => return Err(TaskTokenError::NoTask(task_claim.to_string())),
        Some(Json::String(t))
            if !t.is_empty()
                && t.len() <= MAX_TASK_ID
                && t.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            t.clone()
        }
        Some(_) => return Err(TaskTokenError::BadTask(task_claim.to_string())),
    };
    let raw = delegation.as_ref().map(|_| Arc::from(token));
    Ok(Some(TaskToken {
        task,
        claims: Arc::new(Json::Object(claims)),
        delegation: delegation.map(Arc::new),
        raw,
    }))
}
