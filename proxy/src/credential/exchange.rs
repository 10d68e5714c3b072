//! Token exchange (RFC 8693): the agent's identity token is exchanged at an STS for a token
//! with the credential's audience and the decision's scopes. Tokens are cached per
//! (credential, endpoint, audience, scopes, subject, task) until shortly before they expire;
//! concurrent requests for the same key wait for one exchange. The subject is a SHA-256 of
//! the identity token, so a rotated identity never gets the previous one's token, and the
//! first exchange under a new identity drops every entry of the old one. A failed exchange
//! is an error: the request is answered 503 and never forwarded without its credential.
//!
//! Per task, so that a task's tokens die with it: when a task ends (or its agent is revoked)
//! [`Exchanges::end_task`] takes every token exchanged for it out of the cache — also tokens
//! a refresh replaced or the cache's bound pushed out, which are still valid at the STS
//! (kept in `retired`, at most [`MAX_RETIRED`], until they expire) — for revocation at the
//! STS (`credential/revocation.rs`).
//!
//! Problems and logs name the STS by scheme, host and path only ([`sts_name`]), never by
//! its query or userinfo (config refuses both; this holds even if one slipped through).

mod retire;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toolgate_policy::config::{Config, CredentialSpec, ExchangeSpec, SecretText};

use super::revocation::RevocationTarget;

pub use retire::Retired;
use retire::{end_task, sweep};

/// The RFC 8693 grant type.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Largest STS response read.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Most cache keys remembered.
pub const MAX_ENTRIES: usize = 1024;
/// How long a token exchanged without `expires_in` is remembered for revocation.
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(3600);
/// Most replaced or evicted tokens remembered (still valid, so still to revoke with their task).
pub const MAX_RETIRED: usize = 1024;
/// Longest a token is used before its expiry is near: a tenth of its life, at most this.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// SHA-256 of a subject token: identifies the identity without holding it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SubjectHash([u8; 32]);

impl SubjectHash {
    fn of(subject: &SecretText) -> SubjectHash {
        SubjectHash(Sha256::digest(subject.expose().as_bytes()).into())
    }
}

impl fmt::Debug for SubjectHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sha256:{}",
            hex::encode(self.0.get(..8).unwrap_or_default())
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    credential: String,
    endpoint: String,
    audience: String,
    scope: String,
    subject: SubjectHash,
    task: String,
}

#[derive(Debug, Clone)]
struct Cached {
    token: SecretText,
    /// From here on, a new token is fetched.
    refresh_at: Instant,
    expires_at: Instant,
    /// How to revoke it at the STS, when the credential has a `revocation_endpoint`.
    revocation: Option<Arc<RevocationTarget>>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Exchanged tokens, shared by every request and kept across reloads (until the identity
/// they were exchanged for changes).
#[derive(Debug, Default)]
pub struct Exchanges {
    inner: Arc<Mutex<Inner>>,
    /// Started with the first token that has a task expiry and a revocation endpoint.
    sweeper: std::sync::OnceLock<()>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The identity the cached tokens belong to.
    subject: Option<SubjectHash>,
    slots: HashMap<Key, Slot>,
    /// Tokens no longer served (refreshed, evicted, another identity's) but still valid:
    /// (task, token, expiry, how to revoke it).
    retired: Vec<(String, Retired)>,
    /// When each task's token expires (the latest seen): its exchanged tokens then go.
    deadlines: HashMap<String, Instant>,
}

/// Why an exchange failed; shown to the agent, so it never holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("the STS at {endpoint} could not be reached: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the STS at {endpoint} answered {status}{code}")]
    Refused {
        endpoint: String,
        status: u16,
        /// ` (invalid_target)`: the OAuth error code, when the STS sent a plain one.
        code: String,
    },
    #[error("the STS at {endpoint} sent an unusable answer: {reason}")]
    BadAnswer { endpoint: String, reason: String },
}

impl ExchangeError {
    fn bad(endpoint: &str, reason: impl Into<String>) -> ExchangeError {
        ExchangeError::BadAnswer {
            endpoint: endpoint.to_string(),
            reason: reason.into(),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

fn margin(lifetime: Duration) -> Duration {
    (lifetime / 10).clamp(Duration::from_secs(1), MAX_REFRESH_MARGIN)
}

impl Exchanges {
    fn slot(&self, key: Key) -> Slot {
        let Ok(mut inner) = self.inner.lock() else {
            return Slot::default();
        };
        let now = Instant::now();
        if inner.subject != Some(key.subject) {
            // A new identity (an SVID rotated on reload): the old one's tokens go out of
            // service (still revocable with their task).
            for (task, slot) in inner.take(|_| true) {
                if let Some(cached) = slot.try_lock().ok().and_then(|mut c| c.take()) {
                    inner.retire(&task, cached, now);
                }
            }
            inner.subject = Some(key.subject);
        }
        if inner.slots.len() >= MAX_ENTRIES && !inner.slots.contains_key(&key) {
            // Keep the slots someone is using; take the rest out of service.
            let unused: Vec<Key> = inner
                .slots
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1)
                .map(|(k, _)| k.clone())
                .collect();
            for k in unused {
                let Some(slot) = inner.slots.remove(&k) else {
                    continue;
                };
                if let Some(cached) = slot.try_lock().ok().and_then(|mut c| c.take()) {
                    inner.retire(&k.task, cached, now);
                }
            }
        }
        inner.slots.entry(key).or_default().clone()
    }

    /// A token for `spec` with `scope` in `task`, from the cache or from the STS.
    /// `revocation`: how to revoke what is exchanged now, when the credential says.
    #[allow(clippy::too_many_arguments)]
    pub async fn token(
        &self,
        client: &reqwest::Client,
        name: &str,
        spec: &ExchangeSpec,
        subject: &SecretText,
        scope: &str,
        task: &str,
        task_expires: Option<SystemTime>,
        revocation: Option<Arc<RevocationTarget>>,
    ) -> Result<SecretText, ExchangeError> {
        if let (Some(at), Some(_)) = (task_expires, &revocation) {
            self.expires_with(task, at);
        }
        let slot = self.slot(Key {
            credential: name.to_string(),
            endpoint: spec.endpoint.to_string(),
            audience: spec.audience.clone(),
            scope: scope.to_string(),
            subject: SubjectHash::of(subject),
            task: task.to_string(),
        });
        let mut cached = slot.lock().await;
        let now = Instant::now();
        if let Some(c) = cached.as_ref().filter(|c| now < c.refresh_at) {
            return Ok(c.token.clone());
        }
        match exchange(client, spec, subject, scope).await {
            Ok((token, lifetime)) => {
                let at = Instant::now();
                let fresh = Cached {
                    token: token.clone(),
                    refresh_at: at,
                    // Without a lifetime the STS's own is unknown: remembered (to revoke with
                    // its task) for an hour.
                    expires_at: at + lifetime.unwrap_or(UNKNOWN_LIFETIME),
                    revocation,
                };
                let replaced = match lifetime {
                    Some(lifetime) if lifetime > Duration::from_secs(1) => cached.replace(Cached {
                        refresh_at: at + lifetime.saturating_sub(margin(lifetime)),
                        ..fresh
                    }),
                    // No usable lifetime: used for this request only.
                    _ => {
                        self.retire(task, fresh);
                        cached.take()
                    }
                };
                if let Some(old) = replaced {
                    self.retire(task, old);
                }
                Ok(token)
            }
            Err(e) => match cached.as_ref().filter(|c| Instant::now() < c.expires_at) {
                // Refreshing early failed, but the token in hand is still good.
                Some(c) => {
                    tracing::warn!(target: "toolgate::credential", credential = name, error = %e, "token refresh failed; using the cached token until it expires");
                    Ok(c.token.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Remember that `task`'s token expires at `at` (the latest seen wins): once it has, the
    /// tokens exchanged for the task are taken out of service and revoked.
    fn expires_with(&self, task: &str, at: SystemTime) {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        let deadline = Instant::now() + left;
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.deadlines.len() >= MAX_ENTRIES && !inner.deadlines.contains_key(task) {
            let now = Instant::now();
            inner.deadlines.retain(|_, d| *d > now);
        }
        let entry = inner.deadlines.entry(task.to_string()).or_insert(deadline);
        *entry = (*entry).max(deadline);
        drop(inner);
        self.sweeper.get_or_init(|| sweep(self.inner.clone()));
    }

    fn retire(&self, task: &str, cached: Cached) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.retire(task, cached, Instant::now());
        }
    }

    /// Take every token exchanged for `task` (for any task with `None`: the agent was
    /// revoked) out of service; the ones still valid, to be revoked at the STS.
    pub async fn end_task(&self, task: Option<&str>) -> Vec<Retired> {
        end_task(&self.inner, task).await
    }
}

/// The STS as problems and logs name it: scheme, host (and port) and path — never a query
/// string or userinfo, which could hold a key.
pub fn sts_name(endpoint: &http::Uri) -> String {
    let host = endpoint.host().unwrap_or_default();
    let port = endpoint
        .port_u16()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!(
        "{}://{host}{port}{}",
        endpoint.scheme_str().unwrap_or("https"),
        endpoint.path()
    )
}

async fn exchange(
    client: &reqwest::Client,
    spec: &ExchangeSpec,
    subject: &SecretText,
    scope: &str,
) -> Result<(SecretText, Option<Duration>), ExchangeError> {
    // Errors (shown to the agent, logged) name the STS without its query or userinfo.
    let shown = sts_name(&spec.endpoint);
    let endpoint = shown.as_str();
    let body = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", GRANT_TYPE)
            .append_pair("subject_token", subject.expose())
            .append_pair("subject_token_type", &spec.subject_token_type)
            .append_pair("audience", &spec.audience);
        if !scope.is_empty() {
            form.append_pair("scope", scope);
        }
        if let Some(t) = &spec.requested_token_type {
            form.append_pair("requested_token_type", t);
        }
        form.finish()
    };
    let mut request = client
        .post(spec.endpoint.to_string())
        .timeout(spec.timeout)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(body);
    if let Some((id, secret)) = &spec.client {
        // RFC 6749 §2.3.1: each part form-encoded, then HTTP Basic.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!("{}:{}", enc(id), enc(secret.expose()));
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        );
        let mut value = http::HeaderValue::from_str(&value)
            .map_err(|_| ExchangeError::bad(endpoint, "client credentials are not header-safe"))?;
        value.set_sensitive(true);
        request = request.header(http::header::AUTHORIZATION, value);
    }
    let unreachable = |e: reqwest::Error| ExchangeError::Unreachable {
        endpoint: endpoint.to_string(),
        // Without the URL (it is in `endpoint`) and never a body.
        reason: if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "connection failed".to_string()
        } else {
            e.without_url().to_string()
        },
    };
    let mut response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(ExchangeError::bad(
                endpoint,
                format!("more than {MAX_RESPONSE} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let code = serde_json::from_slice::<ErrorResponse>(&body)
            .ok()
            .map(|e| e.error)
            .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(ExchangeError::Refused {
            endpoint: endpoint.to_string(),
            status: status.as_u16(),
            code,
        });
    }
    let answer: TokenResponse = serde_json::from_slice(&body)
        .map_err(|_| ExchangeError::bad(endpoint, "not a JSON token response with access_token"))?;
    let token = answer.access_token.trim();
    if token.is_empty() || http::HeaderValue::from_str(token).is_err() {
        return Err(ExchangeError::bad(
            endpoint,
            "the access_token is empty or not header-safe",
        ));
    }
    Ok((
        SecretText::new(token),
        answer.expires_in.map(Duration::from_secs),
    ))
}

/// The HTTP client token exchanges use, when `config` has a `token_exchange` credential:
/// system roots plus `tls.upstream_ca`, no proxy (toolgate is the proxy), no redirects (the
/// subject token goes to the configured endpoint and nowhere else).
pub fn client(config: &Config) -> Result<Option<reqwest::Client>, String> {
    let needed = config
        .credentials
        .values()
        .any(|c| matches!(c, CredentialSpec::TokenExchange(_)));
    if !needed {
        return Ok(None);
    }
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.limits.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tls_built_in_root_certs(false);
    // System roots that cannot be read are skipped: the extra roots still apply.
    if let Ok(system) = rustls_native_certs::load_native_certs() {
        for der in system {
            if let Ok(cert) = reqwest::Certificate::from_der(&der) {
                builder = builder.add_root_certificate(cert);
            }
        }
    }
    if let Some(path) = &config.tls.upstream_ca {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map(Some).map_err(|e| e.to_string())
}
