//! The stages before evaluation — accept → normalise → classify — shared by the proxy and the
//! offline commands (`toolgate eval`, `toolgate test`), so what is tested offline is exactly
//! what the proxy decides on.
//!
//! Two steps, because the body is read only when classification needs it: [`head`] reads
//! the request line and headers and says whether the body is needed; [`finish`] classifies,
//! with the body when it was needed.

use http::{HeaderMap, Method};
use serde_json::Value as Json;

use crate::accept::{self, Accepted, Destination};
use crate::body;
use crate::classify::mcp::{self, Rpc};
use crate::classify::{Classification, ClassifyError, Overrides, Protocol};
use crate::config::{body_cap, Config};
use crate::normalise::{self, names, Rejection};

/// A request whose destination, canonical form and action are known.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub accepted: Accepted,
    pub classification: Classification,
    /// The parsed body policy sees as `input.request.body` (read bodies only).
    pub body: Option<Json>,
    /// The JSON-RPC messages of an MCP POST; `classification` is then the first one's.
    pub rpc: Option<Rpc>,
}

/// A request whose head has been read: where it goes and whether its body is needed.
#[derive(Debug, Clone)]
pub struct Head {
    /// Destination and canonical request line.
    pub accepted: Accepted,
    /// The body must be read before the decision: the proxy buffers it (up to the cap) first.
    pub needs_body: bool,
    /// Why the body is read, when it is.
    read: Read,
    /// The body's declared encoding, when classification reads it.
    kind: Option<body::Kind>,
    /// The tool accepts method and URL overrides (`overrides: allow`).
    overrides: bool,
}

/// Why a request's body is read before the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Not read: it streams to the tool.
    No,
    /// A candidate action's body rules or `body:` attributes read it (or the tool is MCP).
    Classify,
    /// A form POST no rule reads, to a tool that refuses overrides: only its field names are
    /// checked for `_method`, which Rails, Laravel and Symfony would act on.
    OverrideScan,
}

/// Why a request was refused before policy (answered with 400, or 413 for a large body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Ambiguous(#[from] ClassifyError),
    #[error("the body is larger than {limit} bytes, the most toolgate reads to classify a request (limits.max_body_bytes, at most 65536)")]
    BodyTooLarge { limit: usize },
    /// MCP routing headers that disagree with the body (JSON-RPC -32020, HTTP 400).
    #[error(transparent)]
    HeaderMismatch(#[from] mcp::headers::Mismatch),
}

/// Accept and normalise the head of a request, and find out whether its body is needed.
/// `destination` is the connection's fixed destination (an intercepted CONNECT tunnel, a
/// transparently captured connection), when it has one.
pub fn head(
    config: &Config,
    destination: Option<&Destination>,
    method: &str,
    target: &[u8],
    headers: &HeaderMap,
) -> Result<Head, Refused> {
    let accepted = match destination {
        Some(d) => accept::accept_at(config, d, method, target, headers)?,
        None => accept::accept(config, method, target, headers)?,
    };
    let tool = accepted.tool.and_then(|t| config.catalog.tool(t));
    let overrides = tool.is_some_and(|t| t.overrides == Overrides::Allow);
    normalise::headers(headers, overrides)?;
    normalise::parameters(&accepted.request.params, overrides, tool.is_some())?;
    let read = if config.catalog.needs_body(accepted.tool, &accepted.request) {
        Read::Classify
    } else if tool.is_some()
        && !overrides
        && accepted.request.method == Method::POST
        && body::declares_form(headers)
    {
        Read::OverrideScan
    } else {
        Read::No
    };
    let kind = match read {
        Read::Classify => body::check_headers(headers)?,
        Read::OverrideScan => {
            body::check_framing(headers)?;
            None
        }
        Read::No => None,
    };
    let needs_body = read != Read::No;
    let limit = body_cap(&config.limits);
    if needs_body && declared_length(headers).is_some_and(|n| n > limit) {
        return Err(Refused::BodyTooLarge { limit });
    }
    Ok(Head {
        accepted,
        needs_body,
        read,
        kind,
        overrides,
    })
}

/// The `Content-Length` a request declares (framing was checked by `normalise::headers`).
pub fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Classify a request whose head is `head`; `body` is its complete body when the head said
/// it is needed (ignored otherwise).
pub fn finish(
    config: &Config,
    head: Head,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<Prepared, Refused> {
    let Head {
        accepted,
        read,
        kind,
        overrides,
        ..
    } = head;
    let catalog = &config.catalog;
    let bytes = body.unwrap_or_default();
    let limit = body_cap(&config.limits);
    if read != Read::No && bytes.len() > limit {
        return Err(Refused::BodyTooLarge { limit });
    }
    if read != Read::Classify {
        if read == Read::OverrideScan {
            body::scan_overrides(bytes)?;
        }
        let classification = catalog.classify(accepted.tool, &accepted.request, headers)?;
        return Ok(Prepared {
            accepted,
            classification,
            body: None,
            rpc: None,
        });
    }
    let tool = accepted.tool.and_then(|t| catalog.tool(t));
    if let Some(t) = tool.filter(|t| t.protocol == Protocol::Mcp) {
        // An MCP POST is JSON-RPC or nothing.
        let parsed = match body::parse(kind, bytes)? {
            Some(v) if kind == Some(body::Kind::Json) => v,
            _ => return Err(Rejection::BadRpc("the body must be a JSON message".into()).into()),
        };
        let rpc = mcp::classify(accepted.tool.unwrap_or_default(), &t.name, &parsed)?;
        // Before policy: a header an intermediary routes on must say what the body says.
        mcp::headers::check(&rpc, headers)?;
        let first = rpc.members.first();
        let classification = first
            .map(|m| m.classification.clone())
            .ok_or_else(|| Rejection::BadRpc("empty batch".into()))?;
        let body = if rpc.batch {
            Some(parsed)
        } else {
            first.map(|m| m.message.clone())
        };
        return Ok(Prepared {
            accepted,
            classification,
            body,
            rpc: Some(rpc),
        });
    }
    let parsed = body::parse(kind, bytes)?;
    if let (Some(Json::Object(fields)), Some(body::Kind::Form), false) = (&parsed, kind, overrides)
    {
        if let Some(name) = fields.keys().find(|k| names::override_parameter(k)) {
            return Err(Rejection::OverrideParameter(normalise::clip(name)).into());
        }
    }
    let classification =
        catalog.classify_body(accepted.tool, &accepted.request, headers, parsed.as_ref())?;
    Ok(Prepared {
        accepted,
        classification,
        body: parsed,
        rpc: None,
    })
}

/// Accept, normalise and classify one request with its complete body (if it has one).
pub fn prepare(
    config: &Config,
    method: &str,
    target: &[u8],
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<Prepared, Refused> {
    let head = head(config, None, method, target, headers)?;
    finish(config, head, headers, body)
}

impl Prepared {
    /// This request as seen for one member of its JSON-RPC batch: the member's action and
    /// message, as if it had been sent alone.
    pub fn member(&self, member: &mcp::Member) -> Prepared {
        Prepared {
            accepted: self.accepted.clone(),
            classification: member.classification.clone(),
            body: Some(member.message.clone()),
            rpc: None,
        }
    }

    /// Whether this is an MCP POST to a tool; GET and DELETE are ordinary requests.
    pub fn is_rpc(&self) -> bool {
        self.rpc.is_some()
    }
}
