//! Credential selection: which configured credential an allowed action gets, and what it
//! would carry — the claims of a minted JWT, the scope a token exchange asks for. The proxy
//! issues what this selects; `toolgate eval` shows it. Nothing here signs, exchanges or
//! reads a credential's value, so a preview can never leak one.

pub mod forms;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::classify::Tool;
use crate::config::{Config, CredentialSpec, ExchangeSpec, JwtSpec, Placement};
use crate::evaluate::CredentialGrant;
use crate::prepare::Prepared;

/// The decision named a credential the request cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownCredential {
    #[error("the policy asked for credential {0:?}, which is not configured")]
    NotConfigured(String),
    /// Credentials go only to catalogued tools, whose upstreams are TLS unless an operator
    /// wrote `http://`; an uncatalogued destination may be plain HTTP the agent chose.
    #[error("the policy asked for credential {0:?} for a destination no catalogued tool serves; credentials are sent only to catalogued tools")]
    NoTool(String),
}

impl UnknownCredential {
    /// The credential the policy named.
    pub fn name(&self) -> &str {
        match self {
            UnknownCredential::NotConfigured(n) | UnknownCredential::NoTool(n) => n,
        }
    }
}

/// The credential chosen for an allowed action.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'c> {
    pub name: &'c str,
    pub spec: &'c CredentialSpec,
}

/// Choose the credential for an allowed action: the decision's, else the tool's default;
/// never one for a destination no catalogued tool serves.
pub fn select<'c>(
    config: &'c Config,
    tool: Option<&Tool>,
    grant: &CredentialGrant,
) -> Result<Option<Selected<'c>>, UnknownCredential> {
    let Some(name) = grant
        .name
        .as_deref()
        .or(tool.and_then(|t| t.credential.as_deref()))
    else {
        return Ok(None);
    };
    match config.credentials.get_key_value(name) {
        Some(_) if tool.is_none() => Err(UnknownCredential::NoTool(name.to_string())),
        Some((name, spec)) => Ok(Some(Selected { name, spec })),
        None => Err(UnknownCredential::NotConfigured(name.to_string())),
    }
}

/// Who a credential is issued to, for what.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub agent: &'a str,
    pub task: &'a str,
    /// The action, or a batch's actions space-separated (see [`actions`]).
    pub action: &'a str,
    /// The delegation chain (`act` claim), when one is known.
    pub act: Option<&'a Json>,
    /// The human approval the request goes out on (`approval` claim: its id).
    pub approval: Option<&'a str>,
    /// When the task's token expires (seconds since the epoch): a credential issued for the
    /// task never outlives it.
    pub not_after: Option<u64>,
}

impl<'a> Subject<'a> {
    /// The agent of `config`, in `task`, performing `action`; the delegation chain comes from
    /// the verified task token's claims, or else the agent's identity token, and the token's
    /// `exp` bounds the credential's.
    pub fn new(
        config: &'a Config,
        task: &'a str,
        action: &'a str,
        task_claims: Option<&'a Json>,
    ) -> Subject<'a> {
        let act =
            |claims: Option<&'a Json>| claims.and_then(|c| c.get("act")).filter(|a| a.is_object());
        Subject {
            agent: &config.agent.id,
            task,
            action,
            act: act(task_claims).or(act(config.agent.claims.as_ref())),
            approval: None,
            not_after: task_claims
                .and_then(|c| c.get("exp"))
                .and_then(Json::as_u64),
        }
    }
}

/// The actions a request performs, space-separated: a batch's members' (each once, sorted,
/// so the order of the members changes nothing), else its own. One request carries one
/// credential, scoped to all of them.
pub fn actions(prepared: &Prepared) -> String {
    match prepared.rpc.as_ref().filter(|r| r.batch) {
        Some(rpc) => {
            let mut names: Vec<&str> = rpc
                .members
                .iter()
                .map(|m| &*m.classification.action)
                .collect();
            names.sort_unstable();
            names.dedup();
            names.join(" ")
        }
        None => prepared.classification.action.to_string(),
    }
}

/// One grant for a batch whose members were granted `grants` (all for the same credential):
/// the shortest lifetime any member was granted (none given: the credential's maximum), and
/// only the scopes every member was granted — never what one member's order would give.
pub fn combine(grants: &[CredentialGrant]) -> CredentialGrant {
    let name = grants.first().and_then(|g| g.name.clone());
    let ttl = grants.iter().filter_map(|g| g.ttl).min();
    let mut scopes: Vec<String> = grants.first().map(|g| g.scopes.clone()).unwrap_or_default();
    scopes.retain(|s| grants.iter().all(|g| g.scopes.contains(s)));
    scopes.sort_unstable();
    scopes.dedup();
    CredentialGrant { name, scopes, ttl }
}

/// The lifetime of a minted token: the policy's ttl, capped at `max_ttl`, at least 1 s.
pub fn lifetime(spec: &JwtSpec, grant: &CredentialGrant) -> Duration {
    let ttl = grant.ttl.map_or(spec.max_ttl, |t| t.min(spec.max_ttl));
    ttl.max(Duration::from_secs(1))
}

/// `scope`: the action first, then the policy's scopes, without repeats.
pub fn scope(action: &str, scopes: &[String]) -> String {
    let mut out = String::from(action);
    for (i, s) in scopes.iter().enumerate() {
        let repeated = s == action || scopes.get(..i).is_some_and(|before| before.contains(s));
        if !repeated {
            out.push(' ');
            out.push_str(s);
        }
    }
    out
}

/// The claims of a minted JWT (DESIGN.md §6), in the order they are serialised.
#[derive(Debug, Serialize)]
pub struct Claims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a str,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// The token's own id; `None` (null) only in a preview, since every token gets its own.
    pub jti: Option<&'a str>,
    pub scope: String,
    pub task: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<&'a Json>,
    /// The id of the human approval the request goes out on, when it needed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<&'a str>,
}

impl<'a> Claims<'a> {
    /// The claims of a token for `subject` under `grant`, issued at `now`.
    pub fn new(
        spec: &'a JwtSpec,
        grant: &CredentialGrant,
        subject: &Subject<'a>,
        now: SystemTime,
        jti: Option<&'a str>,
    ) -> Claims<'a> {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut exp = iat.saturating_add(lifetime(spec, grant).as_secs());
        if let Some(cap) = subject.not_after {
            // Never past the task's token, and never born expired.
            exp = exp.min(cap.max(iat.saturating_add(1)));
        }
        Claims {
            iss: &spec.issuer,
            sub: subject.agent,
            aud: &spec.audience,
            iat,
            nbf: iat,
            exp,
            jti,
            scope: scope(subject.action, &grant.scopes),
            task: subject.task,
            act: subject.act,
            approval: subject.approval,
        }
    }
}

/// The `scope` of a token exchange: the credential's scopes, then the decision's new ones.
pub fn exchange_scope(spec: &ExchangeSpec, grant: &CredentialGrant) -> String {
    let extra = grant.scopes.iter().filter(|s| !spec.scopes.contains(s));
    let scopes: Vec<&str> = spec
        .scopes
        .iter()
        .chain(extra)
        .map(String::as_str)
        .collect();
    scopes.join(" ")
}

/// What `selected` would put on the request for `subject` under `grant`, as of `now`: its
/// name and kind; where a secret goes (never its value); a JWT's header and claims (not
/// signed; `jti` null); what a token exchange would ask the STS for.
pub fn preview(
    selected: &Selected<'_>,
    grant: &CredentialGrant,
    subject: &Subject<'_>,
    now: SystemTime,
) -> Json {
    let mut out = json!({ "name": selected.name, "kind": selected.spec.kind() });
    let detail = match selected.spec {
        CredentialSpec::Secret(s) => match &s.placement {
            Placement::Header(h) => json!({ "header": h.as_str() }),
            Placement::Query(q) => json!({ "query": q }),
        },
        CredentialSpec::Jwt(spec) => json!({
            "header": spec.header.as_str(),
            "jwt_header": { "alg": format!("{:?}", spec.key.algorithm()), "kid": spec.key.kid() },
            "lifetime_seconds": lifetime(spec, grant).as_secs(),
            "claims": Claims::new(spec, grant, subject, now, None),
        }),
        CredentialSpec::TokenExchange(spec) => json!({
            "header": spec.header.as_str(),
            // Without any query: the configuration's business, not the preview's.
            "endpoint": format!(
                "{}://{}{}",
                spec.endpoint.scheme_str().unwrap_or("https"),
                spec.endpoint.authority().map(|a| a.as_str()).unwrap_or(""),
                spec.endpoint.path()
            ),
            "audience": spec.audience,
            "scope": exchange_scope(spec, grant),
            "subject_token_type": spec.subject_token_type,
            "requested_token_type": spec.requested_token_type,
        }),
    };
    if let (Some(out), Json::Object(detail)) = (out.as_object_mut(), detail) {
        out.extend(detail);
    }
    out
}
