//! Minting: a JWT for one allowed action, signed with the key parsed at load.
//!
//! Claims (built by `toolgate_policy::credential::Claims`, which `toolgate eval` also shows):
//! `iss`, `sub` (the agent), `aud` (the tool), `iat` = `nbf` = now,
//! `exp` = now + min(policy ttl, `max_ttl`), `jti` (a UUIDv7, unique per token), `scope`
//! (the action, then the policy's scopes, space-separated), `task`, and `act` when the task
//! token or the agent's identity token carries a delegation chain (RFC 8693 §4.1). A token
//! never outlives the task token its task was named by.

use std::time::SystemTime;

use toolgate_policy::config::JwtSpec;
use toolgate_policy::credential::Claims;
use toolgate_policy::evaluate::CredentialGrant;

pub use toolgate_policy::credential::{lifetime, scope, Subject};

/// A minted token, its id and its expiry.
pub struct Minted {
    pub token: String,
    pub jti: String,
    /// Its `exp`, seconds since the epoch.
    pub exp: u64,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("jti", &self.jti)
            .finish_non_exhaustive()
    }
}

/// Mint a token for `subject` under `grant`, as of `now`.
pub fn mint(
    spec: &JwtSpec,
    grant: &CredentialGrant,
    subject: &Subject<'_>,
    now: SystemTime,
) -> Result<Minted, jsonwebtoken::errors::Error> {
    let jti = uuid::Uuid::now_v7().to_string();
    let claims = Claims::new(spec, grant, subject, now, Some(&jti));
    let token = jsonwebtoken::encode(spec.key.header(), &claims, spec.key.encoding_key())?;
    let exp = claims.exp;
    Ok(Minted { token, jti, exp })
}
