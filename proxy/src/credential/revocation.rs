//! Token revocation at the STS (RFC 7009): when a task ends or its agent is revoked, every
//! token exchanged for it that is still valid is sent to its credential's
//! `revocation_endpoint` — `token=…&token_type_hint=access_token`, with the same client
//! authentication as the exchange. The STS answers 200 whether or not it knew the token;
//! anything else (or no answer within the credential's `timeout`) is reported as a failure,
//! which the operator sees — the token then lives until its own expiry.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;
use toolgate_policy::config::{ExchangeSpec, SecretText};

use super::exchange::{sts_name, Retired};

/// Where and how tokens of one `token_exchange` credential are revoked.
pub struct RevocationTarget {
    /// The credential's name in the configuration.
    pub credential: String,
    pub endpoint: http::Uri,
    pub client: Option<(String, SecretText)>,
    pub timeout: Duration,
    /// The STS client of the configuration that exchanged the token.
    pub http: reqwest::Client,
}

impl std::fmt::Debug for RevocationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationTarget")
            .field("credential", &self.credential)
            .field("endpoint", &sts_name(&self.endpoint))
            .finish_non_exhaustive()
    }
}

impl RevocationTarget {
    /// The target of credential `name`, when its spec has a `revocation_endpoint`.
    pub fn of(name: &str, spec: &ExchangeSpec, http: &reqwest::Client) -> Option<Arc<Self>> {
        let endpoint = http::Uri::clone(spec.revocation_endpoint.as_deref()?);
        Some(Arc::new(RevocationTarget {
            credential: name.to_string(),
            endpoint,
            client: spec.client.clone(),
            timeout: spec.timeout,
            http: http.clone(),
        }))
    }
}

/// What happened to one exchanged token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revoked {
    pub credential: Option<String>,
    /// The STS's revocation endpoint, by scheme, host and path.
    pub endpoint: Option<String>,
    /// `revoked`, `failed` or `not_revocable` (the credential has no `revocation_endpoint`).
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Revoke every token of `retired` at its STS, one after another; what happened to each.
pub async fn revoke_all(retired: Vec<Retired>) -> Vec<Revoked> {
    let mut out = Vec::with_capacity(retired.len());
    for r in retired {
        let Some(target) = r.revocation else {
            out.push(Revoked {
                credential: None,
                endpoint: None,
                result: "not_revocable",
                error: None,
            });
            continue;
        };
        let result = revoke(&target, &r.token).await;
        let endpoint = sts_name(&target.endpoint);
        match &result {
            Ok(()) => {
                tracing::info!(target: "toolgate::credential", credential = %target.credential, %endpoint, "exchanged token revoked at the STS")
            }
            Err(e) => {
                tracing::warn!(target: "toolgate::credential", credential = %target.credential, %endpoint, error = %e, "could not revoke an exchanged token at the STS; it stays valid until it expires")
            }
        }
        out.push(Revoked {
            credential: Some(target.credential.clone()),
            endpoint: Some(endpoint),
            result: if result.is_ok() { "revoked" } else { "failed" },
            error: result.err(),
        });
    }
    out
}

/// One RFC 7009 revocation request.
async fn revoke(target: &RevocationTarget, token: &SecretText) -> Result<(), String> {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token.expose())
        .append_pair("token_type_hint", "access_token")
        .finish();
    let mut request = target
        .http
        .post(target.endpoint.to_string())
        .timeout(target.timeout)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body);
    if let Some((id, secret)) = &target.client {
        // RFC 6749 §2.3.1, as for the exchange itself.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!("{}:{}", enc(id), enc(secret.expose()));
        let mut value = http::HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
        .map_err(|_| "client credentials are not header-safe".to_string())?;
        value.set_sensitive(true);
        request = request.header(http::header::AUTHORIZATION, value);
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "connection failed".to_string()
        } else {
            e.without_url().to_string()
        }
    })?;
    match response.status() {
        s if s.is_success() => Ok(()),
        s => Err(format!("the STS answered {}", s.as_u16())),
    }
}
