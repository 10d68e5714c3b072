//! Minting: a JWT for one allowed action, signed with the key parsed at load.
//!
//! Claims: `iss`, `sub` (the agent), `aud` (the tool), `iat` = `nbf` = now,
//! `exp` = now + min(policy ttl, `max_ttl`), `jti` (a UUIDv7, unique per token), `scope`
//! (the action, then the policy's scopes, space-separated), `task`, and `act` when the task
//! token or the agent's identity token carries a delegation chain (RFC 8693 §4.1).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value as Json;
use toolgate_policy::config::JwtSpec;
use toolgate_policy::evaluate::CredentialGrant;

/// Who a credential is issued to, for what.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub agent: &'a str,
    pub task: &'a str,
    pub action: &'a str,
    /// The delegation chain (`act` claim), when one is known.
    pub act: Option<&'a Json>,
}

/// A minted token and its id.
pub struct Minted {
    pub token: String,
    pub jti: String,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("jti", &self.jti)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: &'a str,
    scope: String,
    task: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a Json>,
}

/// The lifetime of a token: the policy's ttl, capped at `max_ttl`, at least one second.
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

/// Mint a token for `subject` under `grant`, as of `now`.
pub fn mint(
    spec: &JwtSpec,
    grant: &CredentialGrant,
    subject: &Subject<'_>,
    now: SystemTime,
) -> Result<Minted, jsonwebtoken::errors::Error> {
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let jti = uuid::Uuid::now_v7().to_string();
    let claims = Claims {
        iss: &spec.issuer,
        sub: subject.agent,
        aud: &spec.audience,
        iat,
        nbf: iat,
        exp: iat.saturating_add(lifetime(spec, grant).as_secs()),
        jti: &jti,
        scope: scope(subject.action, &grant.scopes),
        task: subject.task,
        act: subject.act,
    };
    let token = jsonwebtoken::encode(spec.key.header(), &claims, spec.key.encoding_key())?;
    Ok(Minted { token, jti })
}
