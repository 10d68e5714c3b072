//! Body: the one reading of a request body that classification and policy rely on, or a
//! refusal. Only bodies a rule needs are read (body rules, `body:` attributes, MCP); the
//! bytes are forwarded unchanged, so the reading must be the one the tool will make:
//! identity encoding only, strict UTF-8, no duplicate keys, no trailing data.

#[cfg(test)]
mod tests;

use std::fmt;

use http::HeaderMap;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};

use crate::normalise::Rejection;

/// How a classified body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/json` or `application/*+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// Check the headers of a request whose body will be read for classification: the body must
/// be uncompressed, plainly framed, and of one declared type. `Ok(None)`: no content type,
/// which is acceptable only for an empty body.
pub fn check_headers(headers: &HeaderMap) -> Result<Option<Kind>, Rejection> {
    for value in headers.get_all(http::header::CONTENT_ENCODING) {
        let v = String::from_utf8_lossy(value.as_bytes());
        if v.split(',')
            .any(|c| !c.trim().eq_ignore_ascii_case("identity"))
        {
            return Err(Rejection::ContentEncoding(v.chars().take(64).collect()));
        }
    }
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        let v = String::from_utf8_lossy(value.as_bytes());
        if !v.trim().eq_ignore_ascii_case("chunked") {
            return Err(Rejection::TransferCoding(v.chars().take(64).collect()));
        }
    }
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    let Some(first) = types.next() else {
        return Ok(None);
    };
    if types.next().is_some() {
        return Err(Rejection::DuplicateHeader("Content-Type"));
    }
    let text = String::from_utf8_lossy(first.as_bytes()).to_ascii_lowercase();
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    for param in parts {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        let v = v.trim().trim_matches('"');
        if k.trim() == "charset" && v != "utf-8" && v != "utf8" {
            return Err(Rejection::BodyType(text.chars().take(64).collect()));
        }
    }
    let kind = match essence.split_once('/') {
        Some(("application", "json")) => Kind::Json,
        Some(("application", "x-www-form-urlencoded")) => Kind::Form,
        Some(("application", sub)) if sub.ends_with("+json") => Kind::Json,
        _ => return Err(Rejection::BodyType(text.chars().take(64).collect())),
    };
    Ok(Some(kind))
}

/// Parse a body for classification. An empty body is no body (`Ok(None)`); a non-empty body
/// needs a JSON or form content type.
pub fn parse(kind: Option<Kind>, bytes: &[u8]) -> Result<Option<Json>, Rejection> {
    if bytes.is_empty() {
        return Ok(None);
    }
    match kind {
        None => Err(Rejection::BodyType("none".to_string())),
        Some(Kind::Json) => json(bytes).map(Some),
        Some(Kind::Form) => form(bytes).map(Some),
    }
}

/// Strict JSON: valid UTF-8, one value, no duplicate object keys at any depth.
pub fn json(bytes: &[u8]) -> Result<Json, Rejection> {
    let text = std::str::from_utf8(bytes).map_err(|_| Rejection::BodyNotUtf8)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict
        .deserialize(&mut de)
        .map_err(|e| match duplicate_key(&e) {
            Some(key) => Rejection::DuplicateKey(key),
            None => Rejection::BadJson(e.to_string()),
        })?;
    de.end().map_err(|e| Rejection::BadJson(e.to_string()))?;
    Ok(value)
}

/// A `application/x-www-form-urlencoded` body as an object of strings. Strict where parsers
/// differ: malformed escapes, invalid UTF-8 once decoded and repeated keys are refused.
pub fn form(bytes: &[u8]) -> Result<Json, Rejection> {
    let mut map = Map::new();
    for pair in bytes.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (pair.get(..i).unwrap_or_default(), pair.get(i + 1..)),
            None => (pair, None),
        };
        let key = decode_form(k)?;
        let value = v.map(decode_form).transpose()?.unwrap_or_default();
        if map.contains_key(&key) {
            return Err(Rejection::DuplicateKey(key.chars().take(64).collect()));
        }
        map.insert(key, Json::String(value));
    }
    Ok(Json::Object(map))
}

fn decode_form(raw: &[u8]) -> Result<String, Rejection> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next().and_then(hex);
                let lo = bytes.next().and_then(hex);
                let (Some(h), Some(l)) = (hi, lo) else {
                    return Err(Rejection::BadForm);
                };
                out.push((h << 4) | l);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| Rejection::BodyNotUtf8)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Marker that `Strict` puts in its error message for a duplicate key.
const DUPLICATE: &str = "toolgate-duplicate-key:";

fn duplicate_key(e: &serde_json::Error) -> Option<String> {
    let text = e.to_string();
    let rest = text.split_once(DUPLICATE)?.1;
    // serde_json appends " at line L column C".
    let key = rest.rsplit_once(" at line ").map_or(rest, |(k, _)| k);
    Some(key.chars().take(64).collect())
}

/// Deserialises a JSON value like `serde_json::Value` does, but fails on a duplicate key.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Json, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE}{key}")));
            }
            let value = access.next_value_seed(Strict)?;
            map.insert(key, value);
        }
        Ok(Json::Object(map))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Json => "json",
            Kind::Form => "form",
        })
    }
}
