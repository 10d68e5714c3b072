//! `delegation`: the key this toolgate signs delegation tokens with (published in its JWKS),
//! their issuer and their longest lifetime; and `introspection`: the clients (tools) that may
//! ask `POST /v1/introspect` whether a credential toolgate issued is still alive.
//!
//! ```yaml
//! delegation: { key_file: keys/delegation.pem, issuer: https://toolgate.agent-a.example, max_ttl: 1h }
//! introspection:
//!   clients: [{ id: payments-api, secret_file: secrets/payments-introspection }]
//! ```

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::raw::{RawDelegation, RawIntrospection};
use super::signing::{SigningKey, SIGNING_ALGORITHMS};
use super::validate::{duration, Collector};
use super::{Agent, Files, SecretText};

/// Default `delegation.max_ttl`.
pub const DEFAULT_DELEGATION_TTL: &str = "1h";
/// The longest `delegation.max_ttl` accepted: a delegation is for work under way.
pub const LONGEST_DELEGATION_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Most introspection clients.
pub const MAX_CLIENTS: usize = 64;

/// How this toolgate signs delegation tokens (`delegation`).
#[derive(Debug, Clone)]
pub struct DelegationSettings {
    /// The tokens' `iss` (default: the agent's id), which receiving toolgates trust.
    pub issuer: String,
    /// The signing key, parsed once at load; its public half is in the JWKS.
    pub key: Arc<SigningKey>,
    /// Longest lifetime of a delegation token, whatever the request asks.
    pub max_ttl: Duration,
}

/// One client that may call the introspection endpoint (HTTP Basic).
#[derive(Debug, Clone)]
pub struct IntrospectionClient {
    pub id: String,
    pub secret: SecretText,
}

/// Who may call `POST /v1/introspect` and `GET /v1/revocations/feed` besides the operator.
#[derive(Debug, Clone, Default)]
pub struct IntrospectionSettings {
    pub clients: Vec<IntrospectionClient>,
}

pub(super) fn delegation(
    c: &mut Collector,
    raw: Option<&RawDelegation>,
    agent: &Agent,
    files: &dyn Files,
) -> Option<DelegationSettings> {
    let raw = raw?;
    let max_ttl = duration(
        c,
        "delegation.max_ttl",
        raw.max_ttl.as_deref(),
        DEFAULT_DELEGATION_TTL,
    );
    if max_ttl < Duration::from_secs(1) {
        c.push(
            "delegation.max_ttl",
            "must be at least 1s: token times are whole seconds",
        );
    }
    if max_ttl > LONGEST_DELEGATION_TTL {
        c.push(
            "delegation.max_ttl",
            "must be at most 7d: a delegation hands on work under way, not a standing permission",
        );
    }
    let issuer = raw.issuer.clone().unwrap_or_else(|| agent.id.clone());
    if issuer.is_empty() || issuer.chars().any(|ch| ch.is_control() || ch == ' ') {
        c.push(
            "delegation.issuer",
            "must be a non-empty name without spaces, e.g. https://toolgate.agent-a.example",
        );
    }
    let algorithm = match raw.algorithm.as_deref().unwrap_or("EdDSA") {
        a if SIGNING_ALGORITHMS.contains(&a) => a.parse::<Algorithm>().ok(),
        other => {
            c.push(
                "delegation.algorithm",
                format!("{other:?} must be one of {}", SIGNING_ALGORITHMS.join(", ")),
            );
            None
        }
    };
    let Some(file) = raw.key_file.as_deref().filter(|f| !f.is_empty()) else {
        c.push(
            "delegation.key_file",
            "required: a PEM private key (`toolgate keys init --out FILE` writes one)",
        );
        return None;
    };
    let pem = super::identity::read_bytes(c, "delegation.key_file", file, files)?;
    let key = SigningKey::from_pem(&pem, algorithm?)
        .map_err(|e| c.push("delegation.key_file", format!("{file}: {e}")))
        .ok()?;
    Some(DelegationSettings {
        issuer,
        key: Arc::new(key),
        max_ttl: max_ttl.min(LONGEST_DELEGATION_TTL),
    })
}

pub(super) fn introspection(
    c: &mut Collector,
    raw: &RawIntrospection,
    files: &dyn Files,
) -> IntrospectionSettings {
    if raw.clients.len() > MAX_CLIENTS {
        c.push(
            "introspection.clients",
            format!("at most {MAX_CLIENTS} clients"),
        );
    }
    let mut clients: Vec<IntrospectionClient> = Vec::new();
    for (i, r) in raw.clients.iter().enumerate() {
        let path = format!("introspection.clients[{i}]");
        // RFC 7617: the user-id of HTTP Basic cannot hold a colon.
        let id_ok = !r.id.is_empty()
            && r.id.len() <= 128
            && r.id.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !id_ok {
            c.push(
                format!("{path}.id"),
                "must be 1 to 128 visible ASCII characters without ':'",
            );
        }
        if clients.iter().any(|o| o.id == r.id) {
            c.push(
                format!("{path}.id"),
                format!("client {:?} is listed twice", r.id),
            );
        }
        let field = format!("{path}.secret_file");
        let Some(text) = super::identity::read_text(c, &field, &r.secret_file, files) else {
            continue;
        };
        let secret = text.trim();
        if let Err(why) = super::operator::judge_secret(secret, "the client secret") {
            c.push(&field, format!("{}: {why}", r.secret_file));
            continue;
        }
        clients.push(IntrospectionClient {
            id: r.id.clone(),
            secret: SecretText::new(secret),
        });
    }
    IntrospectionSettings { clients }
}
