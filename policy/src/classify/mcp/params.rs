//! `Mcp-Param-{Name}` (MCP 2026-07-28): a `tools/call` argument whose input-schema property
//! carries `x-mcp-header: Name` is mirrored into that header. toolgate reads the annotations
//! of the definitions it sees listed ([`param_headers`]) and checks a call's headers against
//! its arguments ([`check_params`]); see [`super::headers`] for why, and the rules.

use http::HeaderMap;
use serde_json::{Map, Value as Json};

use super::headers::{decode, Mismatch, PARAM_PREFIX};

/// One tool argument mirrored into a header: the chain of `properties` keys leading to it in
/// the input schema, and its `x-mcp-header` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    /// `properties` keys from the schema root.
    pub path: Vec<String>,
    /// The header name, lower case (`mcp-param-region`).
    pub header: String,
    /// Declared `type: integer` (compared numerically).
    pub integer: bool,
}

/// Most `x-mcp-header` annotations one tool definition may declare.
pub const MAX_PARAM_HEADERS: usize = 64;
/// Deepest `properties` chain walked for annotations.
const MAX_SCHEMA_DEPTH: usize = 16;

/// The `x-mcp-header` annotations of an input schema, on properties reachable from the root
/// through `properties` alone. `Err` (with why) for a schema the spec says clients must
/// drop: an annotation elsewhere, not a header token, on a non-primitive property, or
/// repeated (case-insensitively).
pub fn param_headers(schema: &Json) -> Result<Vec<ParamHeader>, String> {
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), true, &mut out, 0)?;
    let mut names: Vec<&str> = out.iter().map(|p| p.header.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w.first() == w.get(1)) {
        return Err(format!(
            "x-mcp-header {:?} is declared twice",
            w.first().copied().unwrap_or_default()
        ));
    }
    if out.len() > MAX_PARAM_HEADERS {
        return Err(format!(
            "{} x-mcp-header annotations; toolgate checks at most {MAX_PARAM_HEADERS}",
            out.len()
        ));
    }
    Ok(out)
}

fn walk(
    node: &Json,
    path: &mut Vec<String>,
    reachable: bool,
    out: &mut Vec<ParamHeader>,
    depth: usize,
) -> Result<(), String> {
    let Json::Object(schema) = node else {
        return Ok(());
    };
    if depth > MAX_SCHEMA_DEPTH {
        return Err("the input schema nests deeper than toolgate walks".into());
    }
    if let Some(token) = schema.get("x-mcp-header") {
        if !reachable || path.is_empty() {
            return Err(
                "x-mcp-header on a property not reachable through `properties` alone".into(),
            );
        }
        let Some(token) = token.as_str().filter(|t| is_token(t)) else {
            return Err(format!(
                "x-mcp-header on {} is not a header name token",
                path.join(".")
            ));
        };
        let kind = schema.get("type").and_then(Json::as_str);
        if !matches!(kind, Some("string" | "integer" | "boolean")) {
            return Err(format!(
                "x-mcp-header on {} whose type is not string, integer or boolean",
                path.join(".")
            ));
        }
        out.push(ParamHeader {
            path: path.clone(),
            header: format!("{PARAM_PREFIX}{}", token.to_ascii_lowercase()),
            integer: kind == Some("integer"),
        });
    }
    for (keyword, value) in schema {
        match (keyword.as_str(), value) {
            ("properties", Json::Object(props)) => {
                for (name, sub) in props {
                    path.push(name.clone());
                    walk(sub, path, reachable, out, depth + 1)?;
                    path.pop();
                }
            }
            // Instance data, never schema positions.
            ("default" | "examples" | "const" | "enum", _) => {}
            (_, Json::Object(_)) => walk(value, &mut Vec::new(), false, out, depth + 1)?,
            (_, Json::Array(items)) => {
                for item in items {
                    walk(item, &mut Vec::new(), false, out, depth + 1)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Check the `Mcp-Param-*` headers of a `tools/call` of tool `name` with `arguments`:
/// `declared` is what the tool's definition, as toolgate last saw it, annotates (`None`:
/// toolgate has not seen its definition). `fail` builds the refusal from a message.
pub fn check_params(
    name: &str,
    declared: Option<&[ParamHeader]>,
    arguments: Option<&Map<String, Json>>,
    headers: &HeaderMap,
    fail: impl Fn(String) -> Mismatch,
) -> Result<(), Mismatch> {
    let present: Vec<&str> = headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|k| k.starts_with(PARAM_PREFIX))
        .collect();
    let Some(declared) = declared else {
        return match present.first() {
            Some(h) => Err(fail(format!(
                "{h} cannot be checked: toolgate has not seen the definition of tool {name:?}; list the tools (tools/list) through toolgate, or pin the tool, and send the call again"
            ))),
            None => Ok(()),
        };
    };
    if let Some(h) = present
        .iter()
        .find(|h| !declared.iter().any(|d| d.header == **h))
    {
        return Err(fail(format!(
            "{h} is not declared by any x-mcp-header in tool {name:?}'s input schema as toolgate last saw it; list the tools again"
        )));
    }
    for d in declared {
        let mut values = headers.get_all(d.header.as_str()).iter();
        let raw = values.next();
        if raw.is_some() && values.next().is_some() {
            return Err(fail(format!("{} appears more than once", d.header)));
        }
        let value = arguments.and_then(|a| at_path(a, &d.path));
        let argument = d.path.join(".");
        let rendered = value.and_then(render);
        match (raw, rendered) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(fail(format!(
                    "{} is present but argument {argument:?} is absent or cannot be mirrored",
                    d.header
                )))
            }
            (None, Some(_)) => {
                return Err(fail(format!(
                    "{} is missing but argument {argument:?} is present",
                    d.header
                )))
            }
            (Some(raw), Some(rendered)) => {
                let decoded = raw
                    .to_str()
                    .ok()
                    .and_then(decode)
                    .ok_or_else(|| fail(format!("{} is not a valid header value", d.header)))?;
                let same = decoded == rendered
                    || (d.integer && value.is_some_and(|v| same_integer(v, &decoded)));
                if !same {
                    return Err(fail(format!(
                        "{} does not match argument {argument:?}",
                        d.header
                    )));
                }
            }
        }
    }
    Ok(())
}

fn at_path<'a>(arguments: &'a Map<String, Json>, path: &[String]) -> Option<&'a Json> {
    let (first, rest) = path.split_first()?;
    let mut node = arguments.get(first)?;
    for key in rest {
        node = node.as_object()?.get(key)?;
    }
    (!node.is_null()).then_some(node)
}

/// A body value as a client mirrors it into a header; `None` for one it cannot mirror.
fn render(value: &Json) -> Option<String> {
    match value {
        Json::Bool(b) => Some(b.to_string()),
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `42` in the body and `42` (or `42.0`) in the header are the same integer.
fn same_integer(value: &Json, header: &str) -> bool {
    let whole = match header.split_once('.') {
        Some((w, frac)) if !frac.is_empty() && frac.bytes().all(|b| b == b'0') => w,
        Some(_) => return false,
        None => header,
    };
    let Ok(h) = whole.parse::<i128>() else {
        return false;
    };
    match value {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                i128::from(i) == h
            } else if let Some(u) = n.as_u64() {
                i128::from(u) == h
            } else {
                // A float body value equal to an integer (42.0): exact for |x| < 2^53.
                n.as_f64().is_some_and(|f| {
                    f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 && f as i128 == h
                })
            }
        }
        _ => false,
    }
}
