//! `credentials:` — what toolgate injects on allow, validated and compiled at load:
//! `secret` (a header, or a query parameter; raw or HTTP Basic), `jwt` (minted per action
//! with a signing key parsed here, once) and `token_exchange` (RFC 8693 against an STS).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::Algorithm;

use super::raw::RawCredential;
use super::signing::{SigningKey, SIGNING_ALGORITHMS};
use super::validate::{duration, header_name, is_name, Collector};
use super::{Agent, CredentialSpec, Files, Vars};

/// A secret string (a token, a password): never printed, never serialised.
#[derive(Clone)]
pub struct SecretText(Arc<str>);

impl SecretText {
    /// Wrap a secret.
    pub fn new(s: &str) -> SecretText {
        SecretText(Arc::from(s))
    }

    /// The secret itself, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText(<redacted>)")
    }
}

/// Where a secret is written on the forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A header (lower-case name).
    Header(HeaderName),
    /// A query parameter: any the agent sent under this name is replaced.
    Query(String),
}

/// A `format` such as `Bearer {}`: the text around the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub prefix: String,
    pub suffix: String,
}

impl Format {
    /// `prefix + credential + suffix`.
    pub fn apply(&self, credential: &str) -> String {
        let mut out =
            String::with_capacity(self.prefix.len() + credential.len() + self.suffix.len());
        out.push_str(&self.prefix);
        out.push_str(credential);
        out.push_str(&self.suffix);
        out
    }
}

/// A `kind: jwt` credential: a token minted for each allowed action.
#[derive(Debug, Clone)]
pub struct JwtSpec {
    /// The token's `aud`: the tool that verifies it.
    pub audience: String,
    /// The token's `iss` (default `toolgate`).
    pub issuer: String,
    /// Longest lifetime a token gets, whatever the policy asks (default 60s).
    pub max_ttl: Duration,
    pub header: HeaderName,
    pub format: Format,
    /// The signing key, parsed once at load.
    pub key: Arc<SigningKey>,
}

/// A `kind: token_exchange` credential: a token from an STS (RFC 8693), cached until shortly
/// before it expires.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    /// The STS token endpoint (http or https).
    pub endpoint: http::Uri,
    pub audience: String,
    /// Scopes always requested; the decision's scopes are added to them.
    pub scopes: Vec<String>,
    pub subject_token_type: String,
    pub requested_token_type: Option<String>,
    /// Client authentication (HTTP Basic), when the STS requires it.
    pub client: Option<(String, SecretText)>,
    /// The STS's RFC 7009 revocation endpoint: tokens exchanged for a task are revoked there
    /// when the task ends (or its agent is revoked).
    pub revocation_endpoint: Option<Box<http::Uri>>,
    pub timeout: Duration,
    pub header: HeaderName,
    pub format: Format,
}

/// The `subject_token_type` sent unless configured: the agent's token is a JWT.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Whether `s` may be one OAuth scope token (RFC 6749 §3.3: visible ASCII but `"` and `\`).
pub fn is_scope(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn keys_set(raw: &RawCredential) -> [(&'static str, bool); 20] {
    [
        ("file", raw.file.is_some()),
        ("env", raw.env.is_some()),
        ("header", raw.header.is_some()),
        ("format", raw.format.is_some()),
        ("query", raw.query.is_some()),
        ("username", raw.username.is_some()),
        ("audience", raw.audience.is_some()),
        ("key_file", raw.key_file.is_some()),
        ("issuer", raw.issuer.is_some()),
        ("max_ttl", raw.max_ttl.is_some()),
        ("algorithm", raw.algorithm.is_some()),
        ("endpoint", raw.endpoint.is_some()),
        ("scopes", raw.scopes.is_some()),
        ("subject_token_type", raw.subject_token_type.is_some()),
        ("requested_token_type", raw.requested_token_type.is_some()),
        ("client_id", raw.client_id.is_some()),
        ("client_secret_file", raw.client_secret_file.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("revocation_endpoint", raw.revocation_endpoint.is_some()),
        ("kind", true),
    ]
}

const SECRET_KEYS: &[&str] = &[
    "kind", "file", "env", "header", "format", "query", "username",
];
const JWT_KEYS: &[&str] = &[
    "kind",
    "audience",
    "key_file",
    "issuer",
    "max_ttl",
    "header",
    "format",
    "algorithm",
];
const EXCHANGE_KEYS: &[&str] = &[
    "kind",
    "endpoint",
    "audience",
    "scopes",
    "subject_token_type",
    "requested_token_type",
    "client_id",
    "client_secret_file",
    "timeout",
    "header",
    "format",
    "revocation_endpoint",
];

/// Compile every credential; errors go to `c`.
pub(super) fn compile(
    c: &mut Collector,
    raw: &BTreeMap<String, RawCredential>,
    agent: &Agent,
    files: &dyn Files,
    vars: &dyn Vars,
) -> BTreeMap<String, CredentialSpec> {
    let mut out = BTreeMap::new();
    for (name, cred) in raw {
        let path = format!("credentials.{name}");
        if !is_name(name) {
            c.push(
                &path,
                "name may hold only letters, digits, '_', '-' and '.'",
            );
        }
        let allowed = match cred.kind.as_str() {
            "secret" => SECRET_KEYS,
            "jwt" => JWT_KEYS,
            "token_exchange" => EXCHANGE_KEYS,
            other => {
                c.push(
                    format!("{path}.kind"),
                    format!(
                        "unsupported kind {other:?}: expected `secret`, `jwt` or `token_exchange`"
                    ),
                );
                continue;
            }
        };
        for (key, set) in keys_set(cred) {
            if set && !allowed.contains(&key) {
                c.push(
                    format!("{path}.{key}"),
                    format!("does not apply to kind {}", cred.kind),
                );
            }
        }
        let spec = match cred.kind.as_str() {
            "secret" => secret::compile(c, &path, cred, files, vars).map(CredentialSpec::Secret),
            "jwt" => jwt(c, &path, cred, files).map(CredentialSpec::Jwt),
            _ => exchange::compile(c, &path, cred, agent, files).map(CredentialSpec::TokenExchange),
        };
        if let Some(spec) = spec {
            out.insert(name.clone(), spec);
        }
    }
    out
}

pub(super) fn read_secret(
    c: &mut Collector,
    path: &str,
    file: &str,
    files: &dyn Files,
) -> Option<String> {
    let text = super::identity::read_text(c, path, file, files)?;
    // A trailing newline in a secret file is an editor's, not the secret's.
    Some(text.trim_end_matches(['\n', '\r']).to_string())
}

pub(super) fn format(
    c: &mut Collector,
    path: &str,
    raw: Option<&str>,
    default: &str,
) -> Option<Format> {
    let f = raw.unwrap_or(default);
    let Some((prefix, suffix)) = f.split_once("{}").filter(|(_, s)| !s.contains("{}")) else {
        c.push(
            format!("{path}.format"),
            "must contain `{}` exactly once, where the credential goes",
        );
        return None;
    };
    if http::HeaderValue::from_str(&format!("{prefix}x{suffix}")).is_err() {
        c.push(
            format!("{path}.format"),
            "holds characters not allowed in a header value",
        );
        return None;
    }
    Some(Format {
        prefix: prefix.to_string(),
        suffix: suffix.to_string(),
    })
}

pub(super) fn required<'a>(
    c: &mut Collector,
    path: &str,
    key: &str,
    value: Option<&'a String>,
    what: &str,
) -> Option<&'a str> {
    match value.map(String::as_str) {
        Some(v) if !v.is_empty() => Some(v),
        _ => {
            c.push(format!("{path}.{key}"), format!("required: {what}"));
            None
        }
    }
}

fn jwt(c: &mut Collector, path: &str, cred: &RawCredential, files: &dyn Files) -> Option<JwtSpec> {
    let audience = required(
        c,
        path,
        "audience",
        cred.audience.as_ref(),
        "the tool the token is for, e.g. payments.example.com",
    );
    let algorithm = match cred.algorithm.as_deref().unwrap_or("EdDSA") {
        a if SIGNING_ALGORITHMS.contains(&a) => a.parse::<Algorithm>().ok(),
        other => {
            c.push(
                format!("{path}.algorithm"),
                format!("{other:?} must be one of {}", SIGNING_ALGORITHMS.join(", ")),
            );
            None
        }
    };
    let max_ttl = duration(
        c,
        &format!("{path}.max_ttl"),
        cred.max_ttl.as_deref(),
        "60s",
    );
    if max_ttl < Duration::from_secs(1) {
        c.push(
            format!("{path}.max_ttl"),
            "must be at least 1s: token times are whole seconds",
        );
    }
    let header = header_name(
        c,
        &format!("{path}.header"),
        cred.header.as_deref().unwrap_or("authorization"),
    );
    let format = format(c, path, cred.format.as_deref(), "Bearer {}");
    let key_file = required(
        c,
        path,
        "key_file",
        cred.key_file.as_ref(),
        "a PEM private key (`toolgate keys init --out FILE` writes one)",
    );
    let key = match (key_file, algorithm) {
        (Some(file), Some(alg)) => {
            let kpath = format!("{path}.key_file");
            let pem = super::identity::read_bytes(c, &kpath, file, files);
            pem.and_then(|pem| {
                SigningKey::from_pem(&pem, alg)
                    .map_err(|e| c.push(&kpath, format!("{file}: {e}")))
                    .ok()
            })
        }
        _ => None,
    };
    Some(JwtSpec {
        audience: audience?.to_string(),
        issuer: cred
            .issuer
            .clone()
            .unwrap_or_else(|| "toolgate".to_string()),
        max_ttl,
        header,
        format: format?,
        key: Arc::new(key?),
    })
}

mod exchange;
mod secret;
#[cfg(test)]
mod tests;
