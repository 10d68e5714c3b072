//! The stages before evaluation — accept → normalise → classify — shared by the proxy and the
//! offline commands (`toolgate eval`, `toolgate test`), so what is tested offline is exactly
//! what the proxy decides on.
//!
//! Two steps, because the body is read only when classification needs it: [`head`] reads
//! the request line and headers and says whether the body is needed; [`finish`] classifies,
//! with the body when it was needed.

use http::HeaderMap;
use serde_json::Value as Json;

use crate::accept::{self, Accepted, Destination};
use crate::body;
use crate::classify::mcp::{self, Rpc};
use crate::classify::{Classification, ClassifyError, Protocol};
use crate::config::{body_cap, Config};
use crate::normalise::{self, Rejection};

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
    /// Classification reads the body: the proxy buffers it (up to the cap) first.
    pub needs_body: bool,
    /// The body's declared encoding, when it is needed.
    kind: Option<body::Kind>,
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
    normalise::headers(headers, accepted.tool.is_some())?;
    let needs_body = config.catalog.needs_body(accepted.tool, &accepted.request);
    let kind = if needs_body {
        body::check_headers(headers)?
    } else {
        None
    };
    let limit = body_cap(&config.limits);
    if needs_body && declared_length(headers).is_some_and(|n| n > limit) {
        return Err(Refused::BodyTooLarge { limit });
    }
    Ok(Head {
        accepted,
        needs_body,
        kind,
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
        needs_body,
        kind,
    } = head;
    let catalog = &config.catalog;
    if !needs_body {
        let classification = catalog.classify(accepted.tool, &accepted.request, headers)?;
        return Ok(Prepared {
            accepted,
            classification,
            body: None,
            rpc: None,
        });
    }
    let bytes = body.unwrap_or_default();
    let limit = body_cap(&config.limits);
    if bytes.len() > limit {
        return Err(Refused::BodyTooLarge { limit });
    }
    let tool = accepted.tool.and_then(|t| catalog.tool(t));
    if let Some(t) = tool.filter(|t| t.protocol == Protocol::Mcp) {
        // An MCP POST is JSON-RPC or nothing.
        let parsed = match body::parse(kind, bytes)? {
            Some(v) if kind == Some(body::Kind::Json) => v,
            _ => return Err(Rejection::BadRpc("the body must be a JSON message".into()).into()),
        };
        let rpc = mcp::classify(accepted.tool.unwrap_or_default(), &t.name, &parsed)?;
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
