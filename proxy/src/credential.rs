//! Credential: on allow, strip every credential the agent sent, then inject the one the
//! decision (or the tool's default) names — a static secret, a JWT minted for this one
//! action, or a token exchanged at an STS. The agent never holds the tool's credential and
//! never sees it come back: its exact value is scrubbed from the tool's response headers.

pub mod exchange;
pub mod keys;
pub mod mint;
pub mod revocation;
pub mod scrub;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use toolgate_policy::classify::Tool;
use toolgate_policy::config::{Config, CredentialSpec, Placement, SecretText};
use toolgate_policy::evaluate::{CredentialGrant, CREDENTIAL_HEADERS};
use toolgate_policy::state::Issued;

pub use exchange::Exchanges;
pub use keys::KeyRing;
use toolgate_policy::credential::forms::forms;
pub use toolgate_policy::credential::{actions, select, Selected, Subject, UnknownCredential};

use crate::gateway::{Gateway, Snapshot};
use crate::pipeline::Exchange;

/// Prefix of toolgate's own request headers, all removed before forwarding.
pub const OWN_HEADER_PREFIX: &str = "x-toolgate-";

/// What replaces a credential found in a response header.
pub const REDACTED: &str = "[redacted]";

/// Where an injection is written.
#[derive(Clone)]
enum Target {
    Header(HeaderName, HeaderValue),
    /// A query parameter (name, percent-encoded value).
    Query(String, HeaderValue),
}

/// A credential to write on the forwarded request. Never printed, never serialised.
#[derive(Clone)]
pub struct Injection {
    /// Name of the credential in config (for logs; never the value).
    pub name: String,
    pub kind: &'static str,
    /// The issued credential's own id (a minted token's `jti`); `None` for static secrets.
    pub id: Option<String>,
    target: Target,
    /// Every form of the value that must not reach the agent.
    needles: Arc<[SecretText]>,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A configured credential could not be issued (the STS failed, minting failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credential {name:?} is unavailable: {reason}")]
pub struct Unavailable {
    pub name: String,
    pub reason: String,
}

/// Why the credential stage refused an allowed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Unknown(#[from] UnknownCredential),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Who the exchange `x` issues a credential to: the agent, its task and action, and the
/// delegation chain from the task token (or else the agent's identity token).
pub fn subject<'a>(config: &'a Config, x: &'a Exchange) -> Subject<'a> {
    Subject::new(config, &x.task_id, &x.action, x.task_claims.as_deref())
}

/// The credential stage: select the credential an allowed action gets, and issue it.
pub async fn issue(
    gw: &Gateway,
    snapshot: &Snapshot,
    tool: Option<&Tool>,
    grant: &CredentialGrant,
    subject: &Subject<'_>,
) -> Result<Option<Injection>, CredentialError> {
    match select(&snapshot.config, tool, grant)? {
        Some(selected) => Ok(Some(
            issue_selected(gw, snapshot, selected, grant, subject).await?,
        )),
        None => Ok(None),
    }
}

fn header_value(name: &str, text: &str) -> Result<HeaderValue, Unavailable> {
    let mut v = HeaderValue::from_str(text).map_err(|_| Unavailable {
        name: name.to_string(),
        reason: "the issued value is not header-safe".to_string(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

async fn issue_selected(
    gw: &Gateway,
    snapshot: &Snapshot,
    selected: Selected<'_>,
    grant: &CredentialGrant,
    subject: &Subject<'_>,
) -> Result<Injection, Unavailable> {
    let name = selected.name;
    let unavailable = |reason: String| Unavailable {
        name: name.to_string(),
        reason,
    };
    let injection = |id, target, needles| Injection {
        name: name.to_string(),
        kind: selected.spec.kind(),
        id,
        target,
        needles,
    };
    match selected.spec {
        CredentialSpec::Secret(s) => {
            let target = match &s.placement {
                Placement::Header(h) => Target::Header(h.clone(), s.value.header_value().clone()),
                Placement::Query(q) => Target::Query(q.clone(), s.value.header_value().clone()),
            };
            Ok(injection(None, target, s.needles.clone()))
        }
        CredentialSpec::Jwt(spec) => {
            let now = SystemTime::now();
            let minted = mint::mint(spec, grant, subject, now)
                .map_err(|e| unavailable(format!("cannot mint a token: {e}")))?;
            // Remembered under its task, so that when the task ends it is listed as dead.
            gw.store.issued(
                subject.task,
                Issued {
                    jti: minted.jti.clone(),
                    kind: "jwt",
                    credential: name.to_string(),
                    agent: subject.agent.to_string(),
                    exp: minted.exp,
                },
                now,
            );
            let value = header_value(name, &spec.format.apply(&minted.token))?;
            Ok(injection(
                Some(minted.jti),
                Target::Header(spec.header.clone(), value),
                forms(&[&minted.token]).into(),
            ))
        }
        CredentialSpec::TokenExchange(spec) => {
            let (Some(client), Some(subject_token)) = (&snapshot.sts, &snapshot.config.agent.token)
            else {
                return Err(unavailable(
                    "no STS client or agent identity token".to_string(),
                ));
            };
            let scope = toolgate_policy::credential::exchange_scope(spec, grant);
            let revocation = revocation::RevocationTarget::of(name, spec, client);
            let token = gw
                .exchanges
                .token(
                    client,
                    name,
                    spec,
                    subject_token,
                    &scope,
                    subject.task,
                    subject.not_after.and_then(|s| {
                        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s))
                    }),
                    revocation,
                )
                .await
                .map_err(|e| unavailable(format!("token exchange failed: {e}")))?;
            let value = header_value(name, &spec.format.apply(token.expose()))?;
            Ok(injection(
                None,
                Target::Header(spec.header.clone(), value),
                forms(&[token.expose()]).into(),
            ))
        }
    }
}

/// Headers stripped from the agent's request for `tool`: the well-known credential headers
/// and every header a credential of this tool is written to.
pub fn stripped_headers(config: &Config, tool: Option<&Tool>) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = CREDENTIAL_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .collect();
    if let Some(header) = tool
        .and_then(|t| t.credential.as_deref())
        .and_then(|n| config.credentials.get(n))
        .and_then(CredentialSpec::header)
    {
        out.push(header.clone());
    }
    out
}

/// The query parameters policy may see: without the one the tool's secret is sent in.
pub fn visible_params<'p>(
    config: &Config,
    tool: Option<&Tool>,
    params: &'p [(String, String)],
) -> Cow<'p, [(String, String)]> {
    let hidden = tool
        .and_then(|t| t.credential.as_deref())
        .and_then(|n| config.credentials.get(n));
    match hidden {
        Some(CredentialSpec::Secret(s)) => match &s.placement {
            Placement::Query(q) if params.iter().any(|(k, _)| k == q) => {
                Cow::Owned(params.iter().filter(|(k, _)| k != q).cloned().collect())
            }
            _ => Cow::Borrowed(params),
        },
        _ => Cow::Borrowed(params),
    }
}

/// Remove the agent's credentials and toolgate's own headers, then inject `injection`.
pub fn apply(req: &mut RequestHeader, strip: &[HeaderName], injection: Option<&Injection>) {
    for name in strip {
        req.remove_header(name);
    }
    let own: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with(OWN_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in own {
        req.remove_header(&name);
    }
    if injection.is_some() {
        // A compressed answer could not be checked for the credential (see `scrub`): ask for
        // the body as it is.
        let _ = req.insert_header(http::header::ACCEPT_ENCODING, "identity");
    }
    match injection.map(|i| &i.target) {
        None => {}
        Some(Target::Header(name, value)) => {
            req.remove_header(name);
            // insert_header only fails on invalid names/values, which are checked at issue.
            let _ = req.insert_header(name.clone(), value.clone());
        }
        Some(Target::Query(name, value)) => {
            let target = with_query_param(req.raw_path(), name, value.as_bytes());
            // The target was valid and the parameter is percent-encoded: this cannot fail.
            let _ = req.set_raw_path(&target);
        }
    }
}

/// `target` with every `name=…` parameter removed and `name=value` appended.
fn with_query_param(target: &[u8], name: &str, value: &[u8]) -> Vec<u8> {
    let (path, query) = match target.iter().position(|b| *b == b'?') {
        Some(i) => (
            target.get(..i).unwrap_or(target),
            target.get(i + 1..).unwrap_or_default(),
        ),
        None => (target, &[][..]),
    };
    let mut out = path.to_vec();
    out.push(b'?');
    for pair in query.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let key = pair.split(|b| *b == b'=').next().unwrap_or_default();
        if key != name.as_bytes() {
            out.extend_from_slice(pair);
            out.push(b'&');
        }
    }
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out
}

/// What [`scrub`] found in a response's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scrubbed {
    /// `Set-Cookie` headers dropped.
    pub cookies: usize,
    /// The body is compressed, so it cannot be checked for the credential.
    pub compressed: bool,
}

/// Replace the injected credential, in every form it could come back in, wherever it appears
/// in the tool's response headers: the agent must never see it, even when the tool echoes
/// it. A `Set-Cookie` answering a request that carried an injected credential is dropped: a
/// session the tool opens for toolgate's credential is not the agent's to keep.
pub fn scrub(response: &mut ResponseHeader, injection: Option<&Injection>) -> Scrubbed {
    let Some(injection) = injection else {
        return Scrubbed::default();
    };
    let cookies = response
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .count();
    if cookies > 0 {
        response.remove_header(&http::header::SET_COOKIE);
    }
    let compressed = response
        .headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let finders = scrub::Finders::of(&injection.needles);
    let tainted: Vec<HeaderName> = response
        .headers
        .iter()
        .filter(|(_, v)| finders.as_ref().is_some_and(|f| f.any_in(v.as_bytes())))
        .map(|(k, _)| k.clone())
        .collect();
    let needles: Vec<&[u8]> = if tainted.is_empty() {
        Vec::new()
    } else {
        injection
            .needles
            .iter()
            .map(|n| n.expose().as_bytes())
            .filter(|n| !n.is_empty())
            .collect()
    };
    for name in tainted {
        let values: Vec<Vec<u8>> = response
            .headers
            .get_all(&name)
            .iter()
            .map(|v| redact(v.as_bytes(), &needles))
            .collect();
        response.remove_header(&name);
        for v in values {
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                let _ = response.append_header(name.clone(), v);
            }
        }
    }
    Scrubbed {
        cookies,
        compressed,
    }
}

/// A scrubber for the body of the response to a request that carried `injection`.
pub fn body_scrubber(injection: Option<&Injection>) -> Option<scrub::BodyScrubber> {
    scrub::BodyScrubber::new(injection?.needles.clone())
}

fn redact(value: &[u8], needles: &[&[u8]]) -> Vec<u8> {
    let mut out = value.to_vec();
    for needle in needles {
        let mut scrubbed = Vec::with_capacity(out.len());
        let mut rest = out.as_slice();
        while let Some(i) = memchr::memmem::find(rest, needle) {
            scrubbed.extend_from_slice(rest.get(..i).unwrap_or_default());
            scrubbed.extend_from_slice(REDACTED.as_bytes());
            rest = rest.get(i + needle.len()..).unwrap_or_default();
        }
        scrubbed.extend_from_slice(rest);
        out = scrubbed;
    }
    out
}
