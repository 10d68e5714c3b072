//! Identity configuration: who the agent is (`agent.id`, `agent.id_env`, or the `sub` of the
//! `agent.id_file` token, optionally verified against `agent.jwks_file`) and which issuers'
//! task tokens are trusted (`task_tokens`).
//!
//! The id rule: an explicit `agent.id` (or `agent.id_env`) names the agent; otherwise the
//! `sub` claim of the `id_file` token does. The token's claims are `input.agent.claims`
//! either way. The file is re-read with the rest of the configuration (every second), so a
//! rotated token is picked up; one that no longer verifies, or has expired, is rejected.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Validation;
use serde_json::Value as Json;

use super::credentials::SecretText;
use super::jwks::{self, KeySet};
use super::raw::{RawAgent, RawTaskTokens};
use super::validate::{duration, Collector};
use super::{Agent, Files, Vars};

/// Clock skew allowed when checking the agent identity token's `exp` and `nbf`.
pub const AGENT_LEEWAY: Duration = Duration::from_secs(30);

/// Task tokens accepted in `x-toolgate-task-token`.
#[derive(Debug, Clone)]
pub struct TaskTokens {
    pub issuers: Vec<TokenIssuer>,
    /// The claim naming the task (default `task`).
    pub task_claim: String,
}

/// One trusted task-token issuer.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    pub keys: KeySet,
    /// Checks built once at load: issuer, audience, expiry with the configured leeway.
    pub validation: Validation,
}

/// The bytes of `file`, or an error at `path` naming where it was looked for.
pub(super) fn read_bytes(
    c: &mut Collector,
    path: &str,
    file: &str,
    files: &dyn Files,
) -> Option<Vec<u8>> {
    files
        .read(Path::new(file))
        .map_err(|e| {
            c.push(
                path,
                format!(
                    "cannot read {}: {e}",
                    files.locate(Path::new(file)).display()
                ),
            )
        })
        .ok()
}

/// The text of `file` (UTF-8), or an error at `path`.
pub(super) fn read_text(
    c: &mut Collector,
    path: &str,
    file: &str,
    files: &dyn Files,
) -> Option<String> {
    let bytes = read_bytes(c, path, file, files)?;
    String::from_utf8(bytes)
        .map_err(|_| c.push(path, "not valid UTF-8"))
        .ok()
}

fn key_set(c: &mut Collector, path: &str, file: &str, files: &dyn Files) -> Option<KeySet> {
    let text = read_text(c, path, file, files)?;
    KeySet::parse(text.as_bytes())
        .map_err(|e| c.push(path, format!("{file}: {e}")))
        .ok()
}

pub(super) fn agent(
    c: &mut Collector,
    raw: &RawAgent,
    files: &dyn Files,
    vars: &dyn Vars,
) -> Agent {
    let explicit = match (&raw.id, &raw.id_env) {
        (Some(id), None) => Some(id.clone()),
        (None, Some(var)) => match vars.var(var) {
            Some(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
            _ => {
                c.push(
                    "agent.id_env",
                    format!("environment variable {var} is not set"),
                );
                Some(String::new())
            }
        },
        (Some(_), Some(_)) => {
            c.push("agent", "set one of `id` and `id_env`, not both");
            Some(String::new())
        }
        (None, None) => None,
    };
    if raw.jwks_file.is_some() && raw.id_file.is_none() {
        c.push(
            "agent.jwks_file",
            "verifies the `id_file` token: set `agent.id_file` too",
        );
    }
    let mut agent = Agent {
        id: explicit.clone().unwrap_or_default(),
        ..Agent::default()
    };
    if let Some(file) = &raw.id_file {
        if let Some(token) = identity_token(c, raw, file, files) {
            let sub = token
                .claims
                .get("sub")
                .and_then(Json::as_str)
                .map(str::to_string);
            match (&explicit, sub) {
                (Some(_), _) => {}
                (None, Some(sub)) if !sub.is_empty() => agent.id = sub,
                (None, _) => c.push(
                    "agent.id_file",
                    "the token has no `sub` claim: set `agent.id` to name the agent",
                ),
            }
            agent.expires = token.expires;
            agent.claims = Some(Json::Object(token.claims));
            agent.token = Some(token.text);
        }
    } else if explicit.is_none() {
        c.push(
            "agent.id",
            "required: the agent's identity, e.g. spiffe://example.org/ns/app/sa/agent (or id_env, id_file)",
        );
    }
    agent
}

struct IdentityToken {
    text: SecretText,
    claims: serde_json::Map<String, Json>,
    expires: Option<SystemTime>,
}

fn identity_token(
    c: &mut Collector,
    raw: &RawAgent,
    file: &str,
    files: &dyn Files,
) -> Option<IdentityToken> {
    let text = read_text(c, "agent.id_file", file, files)?;
    let text = text.trim();
    let claims = match &raw.jwks_file {
        Some(jwks_file) => {
            let keys = key_set(c, "agent.jwks_file", jwks_file, files)?;
            let mut validation = Validation::new(keys.algorithms().first().copied()?);
            validation.algorithms = keys.algorithms();
            validation.leeway = AGENT_LEEWAY.as_secs();
            validation.validate_nbf = true;
            // The token's audience is whoever it was issued for (an STS, the API server),
            // not toolgate: toolgate checks who signed it and that it is current.
            validation.validate_aud = false;
            keys.verify(text, &validation)
        }
        None => jwks::unverified_claims(text),
    };
    let claims = match claims {
        Ok(claims) => claims,
        Err(e) => {
            c.push("agent.id_file", format!("the identity token {e}"));
            return None;
        }
    };
    let expires = match claims.get("exp") {
        None => None,
        Some(exp) => match exp.as_u64() {
            Some(secs) => UNIX_EPOCH.checked_add(Duration::from_secs(secs)),
            None => {
                c.push(
                    "agent.id_file",
                    "the identity token's `exp` is not a number",
                );
                return None;
            }
        },
    };
    if expires.is_some_and(|exp| exp + AGENT_LEEWAY <= SystemTime::now()) {
        let when = jwks::claim_time(&claims, "exp").unwrap_or_default();
        c.push(
            "agent.id_file",
            format!("the identity token expired at {when}"),
        );
        return None;
    }
    Some(IdentityToken {
        text: SecretText::new(text),
        claims,
        expires,
    })
}

pub(super) fn task_tokens(
    c: &mut Collector,
    raw: Option<&RawTaskTokens>,
    files: &dyn Files,
) -> Option<TaskTokens> {
    let raw = raw?;
    let leeway = duration(c, "task_tokens.leeway", raw.leeway.as_deref(), "30s");
    let task_claim = raw.task_claim.clone().unwrap_or_else(|| "task".to_string());
    if task_claim.is_empty() {
        c.push("task_tokens.task_claim", "must name a claim");
    }
    if raw.issuers.is_empty() {
        c.push(
            "task_tokens.issuers",
            "required: at least one issuer with its jwks_file",
        );
    }
    let mut issuers: Vec<TokenIssuer> = Vec::new();
    for (i, r) in raw.issuers.iter().enumerate() {
        let path = format!("task_tokens.issuers[{i}]");
        if r.issuer.is_empty() {
            c.push(format!("{path}.issuer"), "must not be empty");
        }
        if issuers.iter().any(|o| o.issuer == r.issuer) {
            c.push(
                format!("{path}.issuer"),
                format!("issuer {:?} is listed twice", r.issuer),
            );
        }
        let Some(keys) = key_set(c, &format!("{path}.jwks_file"), &r.jwks_file, files) else {
            continue;
        };
        let Some(first) = keys.algorithms().first().copied() else {
            continue;
        };
        let mut validation = Validation::new(first);
        validation.algorithms = keys.algorithms();
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&r.issuer]);
        let mut required = vec!["exp", "iss"];
        match &r.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Without a configured audience, a token naming one is refused: it was meant
            // for someone else.
            None => validation.validate_aud = true,
        }
        validation.set_required_spec_claims(&required);
        issuers.push(TokenIssuer {
            issuer: r.issuer.clone(),
            keys,
            validation,
        });
    }
    Some(TaskTokens {
        issuers,
        task_claim,
    })
}

#[cfg(test)]
mod tests;
