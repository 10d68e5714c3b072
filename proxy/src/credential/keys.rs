//! The public keys of minted credentials, served as a JWKS on the admin listener
//! (`GET /.well-known/jwks.json`). Key rotation is replacing the key file: hot reload parses
//! the new key, which signs from then on, while the old one stays published for its
//! credential's `max_ttl` — the longest any token it signed can still be presented. The key
//! delegation tokens are signed with (`delegation.key_file`) is published the same way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use toolgate_policy::config::{Config, CredentialSpec, KeySet};

#[derive(Debug, Clone)]
struct Published {
    kid: String,
    jwk: Json,
    /// Longest lifetime of a token this key signs (the largest `max_ttl` using it).
    max_ttl: Duration,
    /// `None` while the serving configuration signs with it; then when it leaves the JWKS.
    retire_at: Option<Instant>,
}

/// Every key that signed, or signs, credentials that may still be presented.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Mutex<Vec<Published>>,
}

impl KeyRing {
    /// Make `config`'s signing keys the current ones; keys it no longer uses are retired.
    pub fn publish(&self, config: &Config) {
        self.publish_at(config, Instant::now());
    }

    pub(super) fn publish_at(&self, config: &Config, now: Instant) {
        let mut current: Vec<Published> = Vec::new();
        let minted = config.credentials.values().filter_map(|spec| match spec {
            CredentialSpec::Jwt(jwt) => Some((&jwt.key, jwt.max_ttl)),
            _ => None,
        });
        let delegation = config.delegation.as_ref().map(|d| (&d.key, d.max_ttl));
        for (key, max_ttl) in minted.chain(delegation) {
            match current.iter_mut().find(|p| p.kid == key.kid()) {
                Some(p) => p.max_ttl = p.max_ttl.max(max_ttl),
                None => current.push(Published {
                    kid: key.kid().to_string(),
                    jwk: key.jwk().clone(),
                    max_ttl,
                    retire_at: None,
                }),
            }
        }
        let Ok(mut keys) = self.keys.lock() else {
            return;
        };
        for old in keys.iter_mut() {
            if old.retire_at.is_none() && !current.iter().any(|c| c.kid == old.kid) {
                old.retire_at = Some(now + old.max_ttl);
            }
        }
        // A key that comes back (the file swapped back) is current again.
        keys.retain(|old| !current.iter().any(|c| c.kid == old.kid));
        keys.retain(|old| old.retire_at.is_some_and(|t| t > now));
        keys.extend(current);
    }

    /// The JWKS document: current keys first, then retired keys still within their overlap.
    pub fn jwks(&self) -> Json {
        self.jwks_at(Instant::now())
    }

    /// The published keys as a verification key set (introspection); `None` when there are
    /// none.
    pub fn key_set(&self) -> Option<KeySet> {
        let doc = self.jwks();
        KeySet::parse(doc.to_string().as_bytes()).ok()
    }

    pub(super) fn jwks_at(&self, now: Instant) -> Json {
        let Ok(mut keys) = self.keys.lock() else {
            return json!({ "keys": [] });
        };
        keys.retain(|k| k.retire_at.is_none_or(|t| t > now));
        let mut ordered: Vec<&Published> = keys.iter().filter(|k| k.retire_at.is_none()).collect();
        ordered.extend(keys.iter().filter(|k| k.retire_at.is_some()));
        json!({ "keys": ordered.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }
}
