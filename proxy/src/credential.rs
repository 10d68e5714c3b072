//! Credential: on allow, strip every credential the agent sent, then inject the one the
//! decision (or the tool's default) names. The agent never holds the tool's secret.

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use toolgate_policy::classify::Tool;
use toolgate_policy::config::{Config, CredentialSpec};
use toolgate_policy::evaluate::{CredentialGrant, CREDENTIAL_HEADERS};

/// Prefix of toolgate's own request headers, all removed before forwarding.
pub const OWN_HEADER_PREFIX: &str = "x-toolgate-";

/// A credential to write on the forwarded request.
#[derive(Clone)]
pub struct Injection {
    /// Name of the credential in config (for logs; never the value).
    pub name: String,
    pub kind: &'static str,
    /// The issued credential's own id (a minted token's `jti`); `None` for static secrets.
    pub id: Option<String>,
    pub header: HeaderName,
    value: HeaderValue,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("name", &self.name)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// The decision named a credential that config does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the policy asked for credential {0:?}, which is not configured")]
pub struct UnknownCredential(pub String);

/// Choose the credential for an allowed action: the decision's, else the tool's default.
pub fn select(
    config: &Config,
    tool: Option<&Tool>,
    grant: &CredentialGrant,
) -> Result<Option<Injection>, UnknownCredential> {
    let Some(name) = grant
        .name
        .as_deref()
        .or(tool.and_then(|t| t.credential.as_deref()))
    else {
        return Ok(None);
    };
    match config.credentials.get(name) {
        Some(CredentialSpec::Secret(s)) => Ok(Some(Injection {
            name: name.to_string(),
            kind: "secret",
            id: None,
            header: s.header.clone(),
            value: s.value.header_value().clone(),
        })),
        None => Err(UnknownCredential(name.to_string())),
    }
}

/// Headers stripped from the agent's request for `tool`: the well-known credential headers
/// and every header a credential of this tool is written to.
pub fn stripped_headers(config: &Config, tool: Option<&Tool>) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = CREDENTIAL_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .collect();
    if let Some(spec) = tool
        .and_then(|t| t.credential.as_deref())
        .and_then(|n| config.credentials.get(n))
    {
        out.push(spec.header().clone());
    }
    out
}

/// Remove the agent's credentials and toolgate's own headers, then inject `injection`.
pub fn apply(req: &mut RequestHeader, strip: &[HeaderName], injection: Option<&Injection>) {
    for name in strip {
        req.remove_header(name);
    }
    if let Some(i) = injection {
        req.remove_header(&i.header);
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
    if let Some(i) = injection {
        // insert_header only fails on invalid names/values, which config validation excludes.
        let _ = req.insert_header(i.header.clone(), i.value.clone());
    }
}
