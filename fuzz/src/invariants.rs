//! Properties every result of the policy crate's parsers must have, checked on each input the
//! fuzzer tries. Each one is a claim DESIGN.md §7 or README makes; a violation panics with
//! what was expected.

use std::fmt::Display;

use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Map, Value as Json};
use toolgate_policy::accept::{Accepted, Via};
use toolgate_policy::body;
use toolgate_policy::classify::{Action, UNKNOWN};
use toolgate_policy::config::Config;
use toolgate_policy::normalise::{self, names, Normalised};
use toolgate_policy::prepare::{prepare, Prepared};

/// Longest refusal reason: a reason quotes at most two names of 64 characters (each escaped
/// as Rust's `{:?}` does, at most 10 bytes a character) besides its own text. A reason that
/// copies unbounded agent input into the problem body and the decision log breaks this.
pub const MAX_REASON: usize = 2048;

/// A refusal's reason is bounded, whatever the input.
pub fn refusal(e: &impl Display) {
    let reason = e.to_string();
    assert!(!reason.is_empty(), "a refusal without a reason");
    assert!(
        reason.len() <= MAX_REASON,
        "a refusal reason of {} bytes (at most {MAX_REASON}): {}…",
        reason.len(),
        reason.chars().take(200).collect::<String>()
    );
}

/// A canonical request line: what toolgate decides on is exactly what it forwards, and what
/// the tool reads from that.
pub fn normalised(n: &Normalised) {
    let path = n.path.as_str();
    assert!(path.starts_with('/'), "path {path:?} is not absolute");
    assert!(
        path.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'\\' | b';')),
        "path {path:?} holds a byte a canonical path never holds"
    );
    let method = n.method.as_str();
    assert!(
        !method.is_empty()
            && method
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
        "method {method:?} is not an upper-case token"
    );
    // One segment per '/', none of them a separator or a dot segment once decoded.
    assert_eq!(
        n.segments.len(),
        path.matches('/').count(),
        "segments {:?} do not match path {path:?}",
        n.segments
    );
    let last = n.segments.len().saturating_sub(1);
    for (i, s) in n.segments.iter().enumerate() {
        assert!(
            !s.contains(['/', '\\', '\0']),
            "segment {s:?} of {path:?} holds a separator"
        );
        assert!(s != "." && s != "..", "dot segment {s:?} in {path:?}");
        assert!(!s.is_empty() || i == last, "empty segment inside {path:?}");
    }
    // The tool splits then decodes (RFC 3986) and reads the segments toolgate classified.
    assert_eq!(
        upstream_segments(path).as_ref(),
        Some(&n.segments),
        "the tool reads {path:?} as other segments"
    );
    if let Some(q) = &n.query {
        assert!(
            q.bytes().all(|b| b.is_ascii_graphic() && b != b'#'),
            "query {q:?} holds a byte a URI may not hold raw"
        );
    }
    // The forwarded target is a valid origin-form URI, split where toolgate split it.
    let target = n.target();
    let uri: http::Uri = match target.parse() {
        Ok(u) => u,
        Err(e) => panic!("forwarded target {target:?} is not a URI: {e}"),
    };
    assert_eq!(uri.path(), path, "URI path of {target:?}");
    assert_eq!(uri.query(), n.query.as_deref(), "URI query of {target:?}");
    // Canonical means a fixed point.
    match normalise::request(method, target.as_bytes()) {
        Ok(again) => assert_eq!(&again, n, "{target:?} normalises to something else"),
        Err(e) => panic!("canonical target {target:?} is refused: {e}"),
    }
}

/// How a tool splits and decodes the origin-form path it receives.
fn upstream_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    rest.split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
        .collect()
}

/// An accepted request: canonical line, a canonical destination, and the tool that
/// destination belongs to.
pub fn accepted(config: &Config, a: &Accepted) {
    normalised(&a.request);
    assert_ne!(a.port, 0, "accepted port 0");
    // The host is a fixed point of canonicalisation, and a host a resolver reads as an IPv4
    // address (its last label a number, as WHATWG URLs and inet_aton decide) is one, spelled
    // as a dotted quad: otherwise policy sees one host and the connection reaches another.
    let bracketed = if a.host.contains(':') {
        format!("[{}]", a.host)
    } else {
        a.host.clone()
    };
    assert_eq!(
        normalise::authority(&bracketed),
        Ok((a.host.clone(), None)),
        "host {:?} is not canonical",
        a.host
    );
    let last = a.host.rsplit('.').next().unwrap_or_default();
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|d| d.bytes().all(|b| b.is_ascii_hexdigit()));
    let numeric = hex || last.bytes().all(|b| b.is_ascii_digit());
    if !a.host.contains(':') && numeric {
        assert!(
            a.host.parse::<std::net::Ipv4Addr>().is_ok(),
            "host {:?} is an IPv4 address to a resolver, spelled otherwise",
            a.host
        );
    }
    if a.via != Via::Route {
        assert_eq!(
            a.tool,
            config.catalog.tool_for_host(&a.host, a.port),
            "tool of {}:{} via {:?}",
            a.host,
            a.port,
            a.via
        );
    }
}

/// A classified request: the action belongs to the accepted tool, and among the actions at
/// its template it is the first whose body rules all hold on the body policy sees.
pub fn prepared(config: &Config, p: &Prepared) {
    accepted(config, &p.accepted);
    let c = &p.classification;
    assert_eq!(c.tool, p.accepted.tool, "classified for another tool");
    let Some(tool) = c.tool.and_then(|t| config.catalog.tool(t)) else {
        assert_eq!(&*c.action, UNKNOWN, "an action without a tool");
        return;
    };
    let method = &p.accepted.request.method;
    let Some(chosen) = tool
        .actions()
        .iter()
        .position(|a| a.name == c.action && applies(a, method))
    else {
        return; // unknown, or an MCP action (checked by mcp_jsonrpc)
    };
    let body = p.body.as_ref();
    let holds = |a: &Action| {
        a.body
            .iter()
            .all(|r| body.is_some_and(|b| r.holds(b) == Ok(true)))
    };
    let actions = tool.actions();
    let chosen_action = &actions[chosen];
    assert!(
        holds(chosen_action),
        "{} chosen though its body rules do not hold on {body:?}",
        c.action
    );
    // Precedence at one template: body rules first, then method-specific, then file order.
    let key = |i: usize, a: &Action| (a.body.is_empty(), a.method.is_none(), i);
    let chosen_key = key(chosen, chosen_action);
    for (i, a) in actions.iter().enumerate() {
        if a.template == chosen_action.template
            && applies(a, method)
            && !a.body.is_empty()
            && key(i, a) < chosen_key
        {
            assert!(
                !holds(a),
                "{} chosen though {} comes first and its body rules hold on {body:?}",
                c.action,
                a.name
            );
        }
    }
}

fn applies(a: &Action, method: &Method) -> bool {
    a.method.as_ref().is_none_or(|m| m == method)
}

/// A request toolgate accepted reads the same at the tool: sent on as forwarded (origin-form
/// target, the tool's authority), it is accepted again with the same target and classified to
/// the same action and attributes.
pub fn forwarded(config: &Config, p: &Prepared, original: &HeaderMap, body: Option<&[u8]>) {
    let a = &p.accepted;
    // Only where the destination names the tool again (an upstream elsewhere would not).
    if config.catalog.tool_for_host(&a.host, a.port) != a.tool {
        return;
    }
    let host = if a.host.contains(':') {
        format!("[{}]", a.host)
    } else {
        a.host.clone()
    };
    let authority = match a.port {
        80 if !a.tls => host,
        443 if a.tls => host,
        port => format!("{host}:{port}"),
    };
    let scheme = if a.tls { "https" } else { "http" };
    let url = format!("{scheme}://{authority}{}", a.request.target());
    let mut headers = original.clone();
    headers.remove(http::header::HOST);
    match HeaderValue::from_str(&authority) {
        Ok(v) => headers.insert(http::header::HOST, v),
        Err(e) => panic!("authority {authority:?} is not a header value: {e}"),
    };
    let again = match prepare(
        config,
        a.request.method.as_str(),
        url.as_bytes(),
        &headers,
        body,
    ) {
        Ok(again) => again,
        Err(e) => panic!("forwarded {url} is refused: {e}"),
    };
    assert_eq!(
        again.accepted.request.target(),
        a.request.target(),
        "forwarded {url} reads as another target"
    );
    assert_eq!(
        again.classification, p.classification,
        "forwarded {url} classifies differently"
    );
}

/// A strict JSON reading: what a plain JSON parser reads (strictness only refuses), keys
/// unique up to case at every level, and a fixed point through serialisation.
pub fn json_body(bytes: &[u8], v: &Json) {
    match serde_json::from_slice::<Json>(bytes) {
        Ok(plain) => assert_eq!(&plain, v, "a plain JSON parser reads the body otherwise"),
        Err(e) => panic!("accepted a body a plain JSON parser refuses: {e}"),
    }
    case_unique(v);
    let text = match serde_json::to_vec(v) {
        Ok(t) => t,
        Err(e) => panic!("a parsed body does not serialise: {e}"),
    };
    match body::json(&text) {
        Ok(again) => assert_eq!(&again, v, "the body re-reads otherwise once serialised"),
        Err(e) => panic!("the serialised body is refused: {e}"),
    }
}

/// No object, at any depth, holds two keys a case-insensitive binder reads as one.
pub fn case_unique(v: &Json) {
    match v {
        Json::Object(map) => {
            let mut folded: Vec<String> = map.keys().map(|k| names::fold(k)).collect();
            folded.sort();
            let before = folded.len();
            folded.dedup();
            assert_eq!(
                before,
                folded.len(),
                "keys that differ only in case in {map:?}"
            );
            map.values().for_each(case_unique);
        }
        Json::Array(items) => items.iter().for_each(case_unique),
        _ => {}
    }
}

/// A form reading: objects of strings, nested objects and lists of strings, within the
/// documented limits; and the same document when written back as a form.
pub fn form_body(bytes: &[u8], doc: &Json) {
    assert!(
        !body::form::looks_like_json(bytes),
        "a JSON-looking body was read as a form"
    );
    let Json::Object(root) = doc else {
        panic!("a form is not an object: {doc:?}")
    };
    let mut leaves = 0;
    for (name, value) in root {
        assert!(
            !name.is_empty() && !name.contains(['[', ']', '.', ' ']),
            "form base name {name:?}"
        );
        form_value(value, 0, &mut leaves);
    }
    assert!(leaves <= body::form::MAX_FIELDS, "{leaves} form fields");
    case_unique(doc);
    let written = encode_form(root);
    match body::form(written.as_bytes()) {
        Ok(again) => assert_eq!(&again, doc, "the form re-reads otherwise as {written:?}"),
        Err(e) => panic!("the form written back as {written:?} is refused: {e}"),
    }
}

fn form_value(v: &Json, depth: usize, leaves: &mut usize) {
    assert!(depth <= body::form::MAX_DEPTH, "form nested {depth} deep");
    match v {
        Json::String(_) => *leaves += 1,
        Json::Array(items) => {
            assert!(!items.is_empty(), "an empty form list");
            for item in items {
                assert!(item.is_string(), "a form list holds {item:?}");
                *leaves += 1;
            }
        }
        Json::Object(fields) => {
            assert!(!fields.is_empty(), "an empty form object");
            // Numeric keys below the top level run 0..n, n at most MAX_INDEX.
            let numeric: Vec<usize> = fields
                .keys()
                .filter(|k| {
                    !k.is_empty()
                        && k.bytes().all(|b| b.is_ascii_digit())
                        && (*k == "0" || !k.starts_with('0'))
                })
                .map(|k| k.parse().unwrap_or(usize::MAX))
                .collect();
            let mut sorted = numeric.clone();
            sorted.sort_unstable();
            assert!(
                sorted.iter().enumerate().all(|(i, n)| i == *n)
                    && sorted.len() <= body::form::MAX_INDEX,
                "form indices {sorted:?}"
            );
            for (k, v) in fields {
                assert!(!k.is_empty() && !k.contains(['[', ']']), "form key {k:?}");
                form_value(v, depth + 1, leaves);
            }
        }
        other => panic!("a form holds {other:?}"),
    }
}

/// Write a form document back as `application/x-www-form-urlencoded`, every byte of a name
/// or value but letters and digits percent-encoded.
fn encode_form(root: &Map<String, Json>) -> String {
    fn enc(s: &str) -> String {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    }
    fn walk(prefix: String, v: &Json, out: &mut Vec<String>) {
        match v {
            Json::String(s) => out.push(format!("{prefix}={}", enc(s))),
            Json::Array(items) => {
                for item in items {
                    out.push(format!(
                        "{prefix}[]={}",
                        enc(item.as_str().unwrap_or_default())
                    ));
                }
            }
            Json::Object(fields) => {
                for (k, v) in fields {
                    walk(format!("{prefix}[{}]", enc(k)), v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (k, v) in root {
        walk(enc(k), v, &mut out);
    }
    out.join("&")
}
