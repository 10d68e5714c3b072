//! Normalisation: one canonical reading of the request line and framing headers, or a refusal.
//!
//! toolgate decides on the canonical form and forwards exactly that form, so the proxy and the
//! tool cannot read the same bytes differently (Istio CVE-2021-31920, `/public/../secret`).
//! Ambiguous input is rejected, never "fixed up": dot segments, encoded separators, empty
//! segments, path parameters, lower-case methods, conflicting framing headers, method and
//! URL overrides, parameter names that some tool reads as one.

pub mod names;
#[cfg(test)]
mod tests;

use http::{HeaderMap, Method};

use crate::body::FormNameError;
use names::Override;

/// A request line in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    pub method: Method,
    /// Canonical path, percent-encoded where needed; this exact string is forwarded.
    pub path: String,
    /// Decoded path segments (the path split on '/', without the leading empty one).
    pub segments: Vec<String>,
    /// The query exactly as received (without '?'), forwarded unchanged.
    pub query: Option<String>,
    /// Decoded query parameters (form-urlencoded rules), in order.
    pub params: Vec<(String, String)>,
}

/// Why a request was refused before classification (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("method {0:?} is not an upper-case token")]
    Method(String),
    #[error("request target must be an absolute path starting with '/'")]
    NotAbsolutePath,
    #[error("path contains a '.' or '..' segment (raw or percent-encoded)")]
    DotSegment,
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    #[error("path contains a percent-encoded '/', '\\' or NUL")]
    EncodedSeparator,
    #[error("path contains a '\\'")]
    Backslash,
    #[error("path contains a ';' path parameter")]
    PathParameter,
    #[error("path contains a malformed percent-encoding")]
    BadEscape,
    #[error("path contains a control character")]
    ControlCharacter,
    #[error("path or query contains a fragment ('#')")]
    Fragment,
    #[error("path segment is not valid UTF-8 once decoded")]
    NotUtf8,
    #[error("host {0:?} is not a valid host name or address")]
    BadHost(String),
    #[error("request has no host (no absolute-form target and no Host header)")]
    NoHost,
    #[error("Host header {0:?} disagrees with the request target's authority")]
    HostMismatch(String),
    #[error("request target must be origin-form (/path) or absolute-form (http://host/path)")]
    BadTarget,
    #[error("request carries more than one {0} header")]
    DuplicateHeader(&'static str),
    #[error("request carries both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
    #[error("request carries the method-override header {0:?}: a tool may act on that method instead of the one toolgate decided on (a tool that needs overrides sets `overrides: allow`)")]
    MethodOverride(String),
    #[error("request carries the URL-override header {0:?}: a tool may serve that URL instead of the one toolgate decided on (a tool that needs overrides sets `overrides: allow`)")]
    UrlOverride(String),
    #[error("request carries the method-override parameter {0:?}: Rails, Laravel and Symfony act on that method instead of the one toolgate decided on (a tool that needs overrides sets `overrides: allow`)")]
    OverrideParameter(String),
    #[error("query parameters {0:?} and {1:?} are one parameter to some tools (ASP.NET and Go match names case-insensitively, PHP reads '.' and ' ' as '_')")]
    QueryNameCollision(String, String),
    #[error("body has Content-Encoding {0:?}; a body toolgate classifies must be sent uncompressed (identity)")]
    ContentEncoding(String),
    #[error(
        "body has Transfer-Encoding {0:?}; only chunked is accepted on a body toolgate classifies"
    )]
    TransferCoding(String),
    #[error("body content type {0:?}: this route classifies requests by their body, which must be JSON (UTF-8) or form-urlencoded")]
    BodyType(String),
    #[error("body is not valid UTF-8")]
    BodyNotUtf8,
    #[error("body has the key {0:?} more than once; tools disagree on which one counts")]
    DuplicateKey(String),
    #[error("body has the keys {0:?} and {1:?}, which differ only in case; Go's encoding/json and ASP.NET read them as one key")]
    CaseVariantKey(String, String),
    #[error("body is declared as a form (application/x-www-form-urlencoded) but starts like JSON; tools that sniff bodies would read it as JSON")]
    JsonAsForm,
    #[error("form field {name:?}: {why}")]
    FormName { name: String, why: FormNameError },
    #[error("form body has more than {0} fields; qs and PHP ignore the fields past that many")]
    TooManyFields(usize),
    #[error("body is not valid JSON: {0}")]
    BadJson(String),
    #[error("form body has a malformed percent-encoding")]
    BadForm,
    #[error("not a valid JSON-RPC 2.0 request: {0}")]
    BadRpc(String),
}

/// Canonicalise a method and an origin-form target (`/path?query`).
pub fn request(method: &str, target: &[u8]) -> Result<Normalised, Rejection> {
    let method = canonical_method(method)?;
    if target.contains(&b'#') {
        return Err(Rejection::Fragment);
    }
    let (raw_path, raw_query) = match target.iter().position(|b| *b == b'?') {
        Some(i) => (target.get(..i).unwrap_or_default(), target.get(i + 1..)),
        None => (target, None),
    };
    let (path, segments) = canonical_path(raw_path)?;
    let (query, params) = match raw_query {
        Some(q) => {
            let (query, params) = canonical_query(q)?;
            (Some(query), params)
        }
        None => (None, Vec::new()),
    };
    Ok(Normalised {
        method,
        path,
        segments,
        query,
        params,
    })
}

impl Normalised {
    /// The request with its first `n` segments (a route prefix) removed.
    pub fn strip_segments(&self, n: usize) -> Normalised {
        let segments: Vec<String> = self.segments.iter().skip(n).cloned().collect();
        // Canonical paths have exactly one '/' before each segment.
        let cut = self
            .path
            .match_indices('/')
            .nth(n)
            .map(|(i, _)| i)
            .unwrap_or(self.path.len());
        let path = match self.path.get(cut..) {
            Some(rest) if !rest.is_empty() => rest.to_string(),
            _ => "/".to_string(),
        };
        let segments = if segments.is_empty() {
            vec![String::new()]
        } else {
            segments
        };
        Normalised {
            path,
            segments,
            ..self.clone()
        }
    }

    /// Path and query as forwarded upstream (origin-form).
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

fn canonical_method(method: &str) -> Result<Method, Rejection> {
    let valid = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(Rejection::Method(method.chars().take(32).collect()));
    }
    Method::from_bytes(method.as_bytes()).map_err(|_| Rejection::Method(clip(method)))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that may stand raw in a canonical segment: unreserved, sub-delims but ';', ':' and '@'.
fn is_plain(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, b: u8) {
    let digit = |n: u8| {
        char::from_digit(u32::from(n), 16)
            .unwrap_or('0')
            .to_ascii_uppercase()
    };
    out.push('%');
    out.push(digit(b >> 4));
    out.push(digit(b & 0xf));
}

fn canonical_path(raw: &[u8]) -> Result<(String, Vec<String>), Rejection> {
    let rest = raw.strip_prefix(b"/").ok_or(Rejection::NotAbsolutePath)?;
    let parts: Vec<&[u8]> = rest.split(|b| *b == b'/').collect();
    let last = parts.len().saturating_sub(1);
    let mut path = String::with_capacity(raw.len());
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() && i != last {
            return Err(Rejection::EmptySegment);
        }
        path.push('/');
        let mut decoded = Vec::with_capacity(part.len());
        let mut bytes = part.iter().copied();
        while let Some(b) = bytes.next() {
            match b {
                b'%' => {
                    let (Some(h), Some(l)) =
                        (bytes.next().and_then(hex), bytes.next().and_then(hex))
                    else {
                        return Err(Rejection::BadEscape);
                    };
                    let d = (h << 4) | l;
                    if matches!(d, b'/' | b'\\' | 0) {
                        return Err(Rejection::EncodedSeparator);
                    }
                    if is_unreserved(d) {
                        path.push(char::from(d));
                    } else {
                        push_escaped(&mut path, d);
                    }
                    decoded.push(d);
                }
                b'\\' => return Err(Rejection::Backslash),
                b';' => return Err(Rejection::PathParameter),
                b if b.is_ascii_control() => return Err(Rejection::ControlCharacter),
                b if is_plain(b) => {
                    path.push(char::from(b));
                    decoded.push(b);
                }
                b => {
                    push_escaped(&mut path, b);
                    decoded.push(b);
                }
            }
        }
        if decoded == b"." || decoded == b".." {
            return Err(Rejection::DotSegment);
        }
        segments.push(String::from_utf8(decoded).map_err(|_| Rejection::NotUtf8)?);
    }
    Ok((path, segments))
}

/// The query as forwarded and its decoded parameters. Escapes must be well formed and decode
/// to UTF-8; bytes a URI may not hold raw (space, quotes, `{`, non-ASCII…) are
/// percent-encoded, which changes nothing for a form decoder and makes every tool's URI parser
/// accept the same string. Everything else is kept exactly as received.
fn canonical_query(raw: &[u8]) -> Result<(String, Vec<(String, String)>), Rejection> {
    let mut query = String::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (bytes.next(), bytes.next()) else {
                    return Err(Rejection::BadEscape);
                };
                if hex(h).is_none() || hex(l).is_none() {
                    return Err(Rejection::BadEscape);
                }
                query.push('%');
                query.push(char::from(h));
                query.push(char::from(l));
            }
            b if b.is_ascii_control() => return Err(Rejection::ControlCharacter),
            b if is_plain(b) || matches!(b, b'/' | b'?' | b';') => query.push(char::from(b)),
            b => push_escaped(&mut query, b),
        }
    }
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.push((decode_query(k)?, decode_query(v)?));
    }
    Ok((query, params))
}

fn decode_query(s: &str) -> Result<String, Rejection> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Rejection::NotUtf8)
}

/// Canonicalise an authority (`Host` header or absolute-form): lower-case host without a
/// trailing dot (an IPv6 address in its RFC 5952 form), and the port if one is given. A
/// name with an empty label (`a..b`, `.`) is refused, and so is a name ending in a number
/// that is not a dotted-quad IPv4 address: resolvers read `127.1`, `2130706433` and
/// `0x7f.0.0.1` as 127.0.0.1, so policy would see one host and the connection reach another.
pub fn authority(raw: &str) -> Result<(String, Option<u16>), Rejection> {
    let bad = || Rejection::BadHost(raw.chars().take(64).collect());
    if raw.is_empty() || raw.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let address = host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(bad)?,
            ),
        };
        (address.to_string(), port)
    } else {
        let (host, port) = match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
            None => (raw, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| !label.is_empty())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid || (ends_in_number(host) && host.parse::<std::net::Ipv4Addr>().is_err()) {
            return Err(bad());
        }
        (host.to_ascii_lowercase(), port)
    };
    if port == Some(0) {
        return Err(bad());
    }
    Ok((host, port))
}

/// Whether a host name's last label is a number (decimal, or hex with `0x`) — what the WHATWG
/// URL standard and `inet_aton` take for an IPv4 address in one of its many spellings.
fn ends_in_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

/// Refuse framing headers that the proxy and the tool could read differently, and override
/// headers in any spelling unless the tool accepts them (`overrides_allowed`).
pub fn headers(headers: &HeaderMap, overrides_allowed: bool) -> Result<(), Rejection> {
    if headers.get_all(http::header::HOST).iter().count() > 1 {
        return Err(Rejection::DuplicateHeader("Host"));
    }
    let lengths = headers.get_all(http::header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err(Rejection::DuplicateHeader("Content-Length"));
    }
    if lengths == 1 && headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(Rejection::ContentLengthAndTransferEncoding);
    }
    if !overrides_allowed {
        for name in headers.keys() {
            match names::override_header(name.as_str()) {
                Some(Override::Method) => {
                    return Err(Rejection::MethodOverride(name.as_str().to_string()))
                }
                Some(Override::Url) => {
                    return Err(Rejection::UrlOverride(name.as_str().to_string()))
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// Refuse query parameters that a tool could read differently: method overrides (unless
/// `overrides_allowed`), and, on a catalogued tool (`catalogued`), two names that some tool
/// reads as one (`amount` and `Amount`, `a.b` and `a_b`). A name repeated exactly is a list,
/// which tools agree on; an attribute that reads it refuses it (`ClassifyError`).
pub fn parameters(
    params: &[(String, String)],
    overrides_allowed: bool,
    catalogued: bool,
) -> Result<(), Rejection> {
    if !overrides_allowed {
        if let Some((name, _)) = params.iter().find(|(k, _)| names::override_parameter(k)) {
            return Err(Rejection::OverrideParameter(clip(name)));
        }
    }
    if !catalogued {
        return Ok(());
    }
    if params.len() <= 16 {
        // The common case: a few parameters, compared pairwise without allocating.
        for (i, (a, _)) in params.iter().enumerate() {
            let twin = params
                .iter()
                .skip(i + 1)
                .find(|(b, _)| names::same_parameter(a, b));
            if let Some((b, _)) = twin {
                return Err(Rejection::QueryNameCollision(clip(a), clip(b)));
            }
        }
        return Ok(());
    }
    let mut seen: std::collections::HashMap<String, &str> =
        std::collections::HashMap::with_capacity(params.len());
    for (name, _) in params {
        match seen.insert(names::parameter_key(name), name) {
            Some(other) if other != name => {
                return Err(Rejection::QueryNameCollision(clip(other), clip(name)))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A name as quoted in a refusal: at most 64 characters.
pub fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Refuse framing that the HTTP parser already resolved one way, as the tool might resolve it
/// another: `raw` is the request head as received (pingora drops `Content-Length` when
/// `Transfer-Encoding` is present, so the parsed headers no longer show the conflict).
pub fn raw_framing(raw: &[u8]) -> Result<(), Rejection> {
    let mut lengths = 0;
    let mut codings = 0;
    // The first line is the request line; header lines follow, each `name: value`.
    for line in raw.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line.get(..colon).unwrap_or_default();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings += 1;
        }
    }
    match (lengths, codings) {
        (n, _) if n > 1 => Err(Rejection::DuplicateHeader("Content-Length")),
        (1, c) if c > 0 => Err(Rejection::ContentLengthAndTransferEncoding),
        _ => Ok(()),
    }
}
