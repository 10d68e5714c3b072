//! The request headers MCP 2026-07-28 mirrors from the body (streamable HTTP "Request
//! Metadata"): `MCP-Protocol-Version` (= `params._meta["io.modelcontextprotocol/protocolVersion"]`),
//! `Mcp-Method` (= `method`), `Mcp-Name` (= `params.name` of `tools/call` and `prompts/get`,
//! `params.uri` of `resources/read`) and `Mcp-Param-{Name}` (= the `tools/call` argument whose
//! input-schema property carries `x-mcp-header: Name`). Intermediaries route, rate-limit and
//! authorize on these headers while the server executes the body, so a request whose headers
//! and body disagree is refused with JSON-RPC error [`HEADER_MISMATCH`] before policy, and
//! the tool sees nothing.
//!
//! The rules, stricter than a server's where an agent could otherwise slip a value past the
//! decision:
//! - a 2026-07-28 request (its `_meta` carries a protocol version, or its header names a
//!   stateless version) must carry `MCP-Protocol-Version` equal to its `_meta` version,
//!   `Mcp-Method`, and `Mcp-Name` for the methods that name something;
//! - in either era, a routing header that is present must equal the body, appear once, and be
//!   a valid header value; `Mcp-Name` and `Mcp-Param-*` values in the `=?base64?…?=` sentinel
//!   are decoded first (a malformed sentinel never matches);
//! - a batch (2025-03-26 only) has no single method or name: `Mcp-Method` and `Mcp-Name` on
//!   one are refused;
//! - `Mcp-Param-*` headers are checked against the definition toolgate last saw for the tool
//!   ([`super::params::check_params`]): every annotated argument present in the body must be mirrored, equal;
//!   a header no annotation declares, or for a tool whose definition toolgate has not seen, is
//!   refused (the spec's recovery — the client lists tools again and retries — then works,
//!   since the listing passes through toolgate).

use http::HeaderMap;
use serde_json::{Map, Value as Json};

use super::Rpc;

/// JSON-RPC error code of a header/body mismatch (`HeaderMismatch`, MCP 2026-07-28 schema).
pub const HEADER_MISMATCH: i64 = -32020;
/// The protocol version header.
pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// The mirrored JSON-RPC method.
pub const METHOD: &str = "mcp-method";
/// The mirrored name (tool, prompt) or URI (resource).
pub const NAME: &str = "mcp-name";
/// Prefix of the headers mirrored from annotated tool arguments (lower case).
pub const PARAM_PREFIX: &str = "mcp-param-";
/// The `_meta` key that carries a stateless request's protocol version.
pub const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";
/// Protocol revisions whose requests are stateless and mirror their body into headers.
pub const STATELESS_VERSIONS: [&str; 1] = ["2026-07-28"];

/// A request whose routing headers disagree with its body: answered with HTTP 400 and a
/// JSON-RPC error [`HEADER_MISMATCH`] for each request id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header mismatch: {message}")]
pub struct Mismatch {
    pub message: String,
    /// The ids of the request's messages (`null` for a notification).
    pub ids: Vec<Json>,
    /// Whether the body was a batch (answered with an array).
    pub batch: bool,
    /// The (first) message's action, for the answer and the record.
    pub action: Option<String>,
}

/// The mismatch `message` of request `rpc`, answered for each of its requests.
pub fn mismatch(rpc: &Rpc, message: String) -> Mismatch {
    Mismatch {
        message,
        ids: rpc
            .members
            .iter()
            .filter(|m| m.method.is_some())
            .map(|m| m.id.clone().unwrap_or(Json::Null))
            .collect(),
        batch: rpc.batch,
        action: rpc
            .members
            .first()
            .map(|m| m.classification.action.to_string()),
    }
}

/// The body key `Mcp-Name` mirrors for `method`: the spec's three methods, and for any other
/// method that names something, `name` or else `uri`.
pub fn name_key(method: &str, params: Option<&Map<String, Json>>) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => {
            let p = params?;
            if p.get("name").is_some_and(Json::is_string) {
                Some("name")
            } else if p.get("uri").is_some_and(Json::is_string) {
                Some("uri")
            } else {
                None
            }
        }
    }
}

/// Check the standard routing headers (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`)
/// against the classified body `rpc`.
pub fn check(rpc: &Rpc, headers: &HeaderMap) -> Result<(), Mismatch> {
    let fail = |message: String| mismatch(rpc, message);
    for name in [PROTOCOL_VERSION, METHOD, NAME] {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(fail(format!("{name} appears more than once")));
        }
    }
    let header = |name: &str| -> Result<Option<&str>, Mismatch> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(Some)
                .map_err(|_| fail(format!("{name} holds characters a header value may not"))),
        }
    };
    let version = header(PROTOCOL_VERSION)?;
    let method_header = header(METHOD)?;
    let name_header = header(NAME)?;
    if rpc.batch {
        if method_header.is_some() || name_header.is_some() {
            return Err(fail(format!(
                "{METHOD} and {NAME} describe one message; a batch has no single method or name"
            )));
        }
        for m in &rpc.members {
            if let Some(meta_version) = meta_version(&m.message).map_err(&fail)? {
                if version != Some(meta_version) {
                    return Err(fail(format!(
                        "{PROTOCOL_VERSION} does not match the protocol version in params._meta"
                    )));
                }
            }
        }
        return Ok(());
    }
    let Some(member) = rpc.members.first() else {
        return Ok(());
    };
    let meta_version = meta_version(&member.message).map_err(&fail)?;
    let stateless =
        meta_version.is_some() || version.is_some_and(|v| STATELESS_VERSIONS.contains(&v));
    let Some(method) = member.method.as_deref() else {
        // A client's response to a server request: nothing is mirrored from it.
        if method_header.is_some() || name_header.is_some() {
            return Err(fail(format!(
                "{METHOD} and {NAME} mirror a request; this message is a response"
            )));
        }
        return Ok(());
    };
    let request = member.id.is_some();
    if stateless {
        match (version, meta_version) {
            (Some(h), Some(b)) if h == b => {}
            // A notification's headers are not defined by 2026-07-28: the header alone is fine.
            (Some(_), None) if !request => {}
            (None, _) => {
                return Err(fail(format!(
                    "{PROTOCOL_VERSION} is missing; a 2026-07-28 request must carry it"
                )))
            }
            (Some(h), Some(b)) => {
                return Err(fail(format!(
                    "{PROTOCOL_VERSION} is {h:?} but params._meta[{VERSION_META:?}] is {b:?}"
                )))
            }
            (Some(h), None) => {
                return Err(fail(format!(
                    "{PROTOCOL_VERSION} is {h:?} but params._meta carries no {VERSION_META:?}"
                )))
            }
        }
    }
    match method_header {
        Some(h) if h != method => {
            return Err(fail(format!(
                "{METHOD} is {h:?} but the body's method is {method:?}"
            )))
        }
        None if stateless && request => {
            return Err(fail(format!(
                "{METHOD} is missing; a 2026-07-28 request must carry it"
            )))
        }
        _ => {}
    }
    let params = member.message.get("params").and_then(Json::as_object);
    let key = name_key(method, params);
    let body_name = key.and_then(|k| params?.get(k)?.as_str());
    match (name_header, body_name) {
        (Some(h), Some(b)) => {
            if decode(h).as_deref() != Some(b) {
                return Err(fail(format!(
                    "{NAME} does not match the body's params.{}",
                    key.unwrap_or("name")
                )));
            }
        }
        (Some(_), None) => {
            return Err(fail(format!(
                "{NAME} is present but the body's {method} names nothing to mirror"
            )))
        }
        (None, Some(_)) if stateless && request => {
            return Err(fail(format!(
                "{NAME} is missing; a 2026-07-28 {method} request must carry params.{} in it",
                key.unwrap_or("name")
            )))
        }
        (None, _) => {}
    }
    Ok(())
}

/// `params._meta["io.modelcontextprotocol/protocolVersion"]` of `message`, if present.
fn meta_version(message: &Json) -> Result<Option<&str>, String> {
    let Some(v) = message
        .get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(VERSION_META))
    else {
        return Ok(None);
    };
    v.as_str()
        .map(Some)
        .ok_or_else(|| format!("params._meta[{VERSION_META:?}] must be a string"))
}

/// Decode a header value that may use the `=?base64?…?=` sentinel (canonical base64 of
/// UTF-8); `None` for a malformed sentinel, which never matches a body value.
pub fn decode(value: &str) -> Option<String> {
    let Some(payload) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    else {
        return Some(value.to_string());
    };
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let bytes = engine.decode(payload).ok()?;
    // Only the canonical encoding: bits the encoder would never set make another value.
    if engine.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}
