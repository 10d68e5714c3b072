//! Human approval bound to the exact request (DESIGN.md §11): what a decision asks for, the
//! digest that ties an approval to one request, what a human is shown of that request, and
//! the operator's verdict. The store that keeps approvals is `state::approvals`; the proxy
//! holds the request and answers the agent.
//!
//! The digest binds everything that makes a request *that* request: the agent, the task (and
//! whether a task token verified it), the action and its attributes (canonical JSON, sorted
//! keys), the method, the canonical target (scheme, host, port, path and query as
//! forwarded), the headers that change how the tool reads the body or the request
//! ([`BOUND_HEADERS`]) and a SHA-256 of the body bytes as forwarded. Two requests with the
//! same digest are the identical request; another amount, ticket, body or task never
//! matches. It is computed in two steps — a *head* digest over everything but the body, then
//! the full digest over the head and the body's hash — so the proxy reads a streamed body
//! only when an approval could match it.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};

use crate::normalise::names::{METHOD_OVERRIDE_HEADERS, URL_OVERRIDE_HEADERS};

/// Most approvers a decision may name.
pub const MAX_APPROVERS: usize = 16;
/// Longest approver name, in a decision or in an operator's verdict, in bytes.
pub const MAX_APPROVER_BYTES: usize = 128;
/// Longest reason a decision gives for the approval, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest comment an operator may give with a verdict, in bytes.
pub const MAX_COMMENT_BYTES: usize = 1024;
/// Shortest lifetime an approval may have.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Most body bytes kept to show a human (the digest binds the whole body).
pub const MAX_SHOWN_BODY: usize = 2048;
/// Most header bytes (names and values) kept to show a human.
pub const MAX_SHOWN_HEADERS: usize = 2048;
/// Most estimated bytes of attributes kept to show a human (as the chain keeps them).
pub const MAX_SHOWN_ATTRIBUTES: usize = 1024;

/// Headers bound by the digest besides the request line: the body's media type and coding
/// (the same bytes read as another type are another request) and the override headers a
/// tool with `overrides: allow` acts on.
pub const BOUND_HEADERS: [&str; 8] = [
    "content-type",
    "content-encoding",
    METHOD_OVERRIDE_HEADERS[0],
    METHOD_OVERRIDE_HEADERS[1],
    METHOD_OVERRIDE_HEADERS[2],
    URL_OVERRIDE_HEADERS[0],
    URL_OVERRIDE_HEADERS[1],
    URL_OVERRIDE_HEADERS[2],
];

/// What a decision asks for when it requires a human's approval: `"approval": "required"`,
/// or `{"required": true, "approvers": [...], "ttl": "10m", "reason": "...", "wait": "30s"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    /// Who should decide (shown to humans and sent to the webhook; not enforced: whoever
    /// holds the operator credential decides).
    pub approvers: Vec<String>,
    /// How long the approval lives (pending, then approved), from when it is requested;
    /// `None`: `approvals.default_ttl`. Cut to `approvals.max_ttl`.
    pub ttl: Option<Duration>,
    /// Why a human must look, for the human; `None`: the decision's reason.
    pub reason: Option<String>,
    /// Hold the request open until it is decided, at most this long (cut to
    /// `approvals.max_wait`).
    pub wait: Option<Duration>,
}

impl Ask {
    /// This ask as `toolgate eval` shows it.
    pub fn to_json(&self) -> Json {
        let duration = |d: &Duration| humantime::format_duration(*d).to_string();
        serde_json::json!({
            "required": true,
            "approvers": self.approvers,
            "ttl": self.ttl.as_ref().map(duration),
            "reason": self.reason,
            "wait": self.wait.as_ref().map(duration),
        })
    }
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(64);
        for b in self.0 {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Parse what [`Digest::to_hex`] printed.
    pub fn from_hex(text: &str) -> Option<Digest> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
            let s = std::str::from_utf8(pair).ok()?;
            *slot = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(d)?;
        Digest::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a digest is 64 lower-case hex digits"))
    }
}

/// Everything but the body that makes a request that request.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub agent: &'a str,
    pub task: &'a str,
    /// The task was named by a verified task token.
    pub task_verified: bool,
    pub action: &'a str,
    pub attributes: &'a [(Arc<str>, Json)],
    pub method: &'a str,
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// Path and query, exactly as forwarded (`/v1/payments?amount=500`).
    pub target: &'a str,
    pub headers: &'a HeaderMap,
}

/// Feed `bytes` with its length, so no two field sequences hash the same.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

impl Binding<'_> {
    /// The head digest: everything but the body.
    pub fn head(&self) -> Digest {
        let mut h = Sha256::new();
        field(&mut h, b"toolgate approval head v1");
        field(&mut h, self.agent.as_bytes());
        field(&mut h, self.task.as_bytes());
        field(&mut h, &[u8::from(self.task_verified)]);
        field(&mut h, self.action.as_bytes());
        let attributes: BTreeMap<&str, &Json> =
            self.attributes.iter().map(|(k, v)| (&**k, v)).collect();
        let mut canonical = String::new();
        canonical.push('{');
        for (i, (k, v)) in attributes.iter().enumerate() {
            if i > 0 {
                canonical.push(',');
            }
            write_string(&mut canonical, k);
            canonical.push(':');
            write_canonical(&mut canonical, v);
        }
        canonical.push('}');
        field(&mut h, canonical.as_bytes());
        field(&mut h, self.method.as_bytes());
        field(&mut h, self.scheme.as_bytes());
        field(&mut h, self.host.as_bytes());
        field(&mut h, &self.port.to_be_bytes());
        field(&mut h, self.target.as_bytes());
        for name in BOUND_HEADERS {
            let values = self.headers.get_all(name);
            h.update((values.iter().count() as u64).to_be_bytes());
            for v in values {
                field(&mut h, v.as_bytes());
            }
        }
        Digest(h.finalize().into())
    }
}

/// SHA-256 of `body` (an absent body is the empty one).
pub fn body_hash(body: &[u8]) -> Digest {
    Digest(Sha256::digest(body).into())
}

/// The full digest of a request: its head digest and its body's hash.
pub fn digest(head: &Digest, body: &Digest) -> Digest {
    let mut h = Sha256::new();
    field(&mut h, b"toolgate approval v1");
    field(&mut h, &head.0);
    field(&mut h, &body.0);
    Digest(h.finalize().into())
}

/// The hash an MCP JSON-RPC message is bound by: its canonical JSON without the `id`, which
/// a client picks anew for every call (the method and the call's name and arguments bind it).
pub fn rpc_body_hash(message: &Json) -> Digest {
    let mut canonical = String::new();
    match message {
        Json::Object(map) => {
            let without_id: serde_json::Map<String, Json> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "id")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            write_canonical(&mut canonical, &Json::Object(without_id));
        }
        other => write_canonical(&mut canonical, other),
    }
    body_hash(canonical.as_bytes())
}

/// JSON with object keys sorted by their bytes and no insignificant whitespace.
pub fn canonical_json(v: &Json) -> String {
    let mut out = String::new();
    write_canonical(&mut out, v);
    out
}

fn write_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn write_canonical(out: &mut String, v: &Json) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(&n.to_string()),
        Json::String(s) => write_string(out, s),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(out, v);
                }
            }
            out.push('}');
        }
    }
}

/// The request as a human deciding on it sees it: never a credential (the agent's
/// credential headers and the query parameter a secret goes in are left out), the body cut
/// at [`MAX_SHOWN_BODY`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shown {
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The query as forwarded, without a credential parameter.
    pub query: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// The headers were cut at [`MAX_SHOWN_HEADERS`] bytes.
    #[serde(default)]
    pub headers_truncated: bool,
    pub body: Option<ShownBody>,
}

/// The request body as shown: text when it is UTF-8 without control characters (other than
/// tab and newlines), else base64; its full length and hash either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShownBody {
    /// The complete body's length in bytes.
    pub bytes: u64,
    /// SHA-256 of the complete body, hex.
    pub sha256: String,
    /// Its first [`MAX_SHOWN_BODY`] bytes as text, when they are text.
    pub text: Option<String>,
    /// Its first [`MAX_SHOWN_BODY`] bytes in base64, when they are not text.
    pub base64: Option<String>,
    /// Only the first [`MAX_SHOWN_BODY`] bytes are shown.
    pub truncated: bool,
}

impl ShownBody {
    /// `body` as shown, with its hash.
    pub fn of(body: &[u8], hash: &Digest) -> ShownBody {
        use base64::Engine as _;
        let mut cut = body
            .get(..body.len().min(MAX_SHOWN_BODY))
            .unwrap_or_default();
        // Cut at a character boundary when the body is text.
        let text = loop {
            match std::str::from_utf8(cut) {
                Ok(t) => break Some(t),
                Err(e) if e.error_len().is_none() && cut.len() < body.len() => {
                    cut = cut.get(..e.valid_up_to()).unwrap_or_default();
                }
                Err(_) => break None,
            }
        };
        let text = text.filter(|t| {
            !t.chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        });
        let base64 = text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(cut));
        ShownBody {
            bytes: body.len() as u64,
            sha256: hash.to_hex(),
            text: text.map(str::to_string),
            base64,
            truncated: cut.len() < body.len(),
        }
    }
}

/// At most `max` bytes of header names and values, credential headers and `hidden` ones
/// left out; whether some were cut.
pub fn shown_headers(
    headers: &HeaderMap,
    hidden: &[http::HeaderName],
    max: usize,
) -> (BTreeMap<String, String>, bool) {
    let mut out = BTreeMap::new();
    let mut used = 0usize;
    let mut cut = false;
    for name in headers.keys() {
        let n = name.as_str();
        if crate::evaluate::CREDENTIAL_HEADERS.contains(&n)
            || hidden.contains(name)
            || n.starts_with("x-toolgate-")
        {
            continue;
        }
        let value = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        let size = n.len() + value.len();
        if used + size > max {
            cut = true;
            continue;
        }
        used += size;
        out.insert(n.to_string(), value);
    }
    (out, cut)
}

/// A query string without the parameter named `hidden` (the one a secret is sent in).
pub fn shown_query(query: Option<&str>, hidden: Option<&str>) -> Option<String> {
    let query = query?;
    let Some(hidden) = hidden else {
        return Some(query.to_string());
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let decoded = percent_encoding::percent_decode_str(&name.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            decoded != hidden
        })
        .collect();
    Some(kept.join("&"))
}

/// An operator's verdict on a pending approval: the body of `POST
/// /v1/approvals/{id}/approve` and `…/deny`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Who decided (as the operator names themselves; the operator credential is the
    /// authority).
    pub approver: String,
    pub comment: Option<String>,
}

/// Why a verdict body was refused (a 400 the operator can act on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerdictError {
    #[error("the body is not a JSON object like {{\"approver\": \"alice@example.com\", \"comment\": \"ok\"}}: {0}")]
    Json(String),
    #[error("\"approver\" is required: who decides, 1 to {MAX_APPROVER_BYTES} bytes without control characters")]
    BadApprover,
    #[error("\"comment\" must be at most {MAX_COMMENT_BYTES} bytes, without control characters other than newlines and tabs")]
    BadComment,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerdictBody {
    approver: Option<String>,
    comment: Option<String>,
}

/// Parse and check a verdict body. Any bytes give `Ok` or a [`VerdictError`].
pub fn parse_verdict(body: &[u8]) -> Result<Verdict, VerdictError> {
    let parsed: VerdictBody =
        serde_json::from_slice(body).map_err(|e| VerdictError::Json(clip(&e.to_string())))?;
    let approver = parsed
        .approver
        .map(|a| a.trim().to_string())
        .filter(|a| valid_name(a))
        .ok_or(VerdictError::BadApprover)?;
    let comment = match parsed.comment {
        None => None,
        Some(c) if valid_comment(&c) => Some(c).filter(|c| !c.is_empty()),
        Some(_) => return Err(VerdictError::BadComment),
    };
    Ok(Verdict { approver, comment })
}

/// 1 to [`MAX_APPROVER_BYTES`] bytes, no control characters: an approver's name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_APPROVER_BYTES && !s.chars().any(char::is_control)
}

/// At most [`MAX_COMMENT_BYTES`] bytes; newlines and tabs are the only control characters.
pub fn valid_comment(s: &str) -> bool {
    s.len() <= MAX_COMMENT_BYTES
        && !s
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
}

/// At most 200 characters of a message that may quote input.
fn clip(s: &str) -> String {
    let mut cut: String = s.chars().take(200).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    cut
}

/// `input.approval`: the approved approval a retried request matched, which policy sees so
/// it can still refuse (`{id, approved_by, approved_at, comment}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub id: String,
    pub approved_by: String,
    /// RFC 3339.
    pub approved_at: String,
    pub comment: Option<String>,
}

impl Granted {
    /// The `input.approval` document.
    pub fn to_value(&self) -> regorus::Value {
        let mut map: BTreeMap<regorus::Value, regorus::Value> = BTreeMap::new();
        map.insert("id".into(), self.id.as_str().into());
        map.insert("approved_by".into(), self.approved_by.as_str().into());
        map.insert("approved_at".into(), self.approved_at.as_str().into());
        map.insert(
            "comment".into(),
            self.comment
                .as_deref()
                .map(regorus::Value::from)
                .unwrap_or(regorus::Value::Null),
        );
        regorus::Value::from(map)
    }

    /// Set `input.approval` on the input document `input` (an object).
    pub fn annotate(&self, input: &mut regorus::Value) {
        if let Ok(map) = input.as_object_mut() {
            map.insert("approval".into(), self.to_value());
        }
    }
}
