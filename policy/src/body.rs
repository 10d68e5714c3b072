//! Body: the one reading of a request body that classification and policy rely on, or a
//! refusal. Only bodies a rule needs are read (body rules, `body:` attributes, MCP); the
//! bytes are forwarded unchanged, so the reading must be the one the tool will make:
//! identity encoding only, strict UTF-8, no duplicate keys, no keys that differ only in case,
//! no trailing data, forms that are not JSON and whose bracketed names every common framework
//! nests alike.

pub mod form;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use http::HeaderMap;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};

pub use form::FormNameError;

use crate::normalise::{clip, names, Rejection};

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
    check_framing(headers)?;
    declared_kind(headers)
}

/// Whether a request declares a form body (`application/x-www-form-urlencoded`, whatever its
/// parameters), the kind of body whose `_method` field Rails, Laravel and Symfony read.
pub fn declares_form(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::CONTENT_TYPE).iter().any(|v| {
        let essence = v
            .as_bytes()
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default();
        essence
            .trim_ascii()
            .eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    })
}

/// Refuse a method-override field (`_method=DELETE`) in a form body that no rule reads, for
/// the tools that honour it. The names are decoded as leniently as those tools decode them
/// (a malformed escape stays as sent); nothing else about the body is checked.
pub fn scan_overrides(bytes: &[u8]) -> Result<(), Rejection> {
    for pair in bytes.split(|b| *b == b'&') {
        let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
        let plus: Vec<u8> = name
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect();
        let decoded = percent_encoding::percent_decode(&plus).decode_utf8_lossy();
        if names::override_parameter(&decoded) {
            return Err(Rejection::OverrideParameter(clip(&decoded)));
        }
    }
    Ok(())
}

/// Refuse a body encoding toolgate cannot read: any content coding but `identity`, any
/// transfer coding but `chunked`.
pub fn check_framing(headers: &HeaderMap) -> Result<(), Rejection> {
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
    Ok(())
}

/// The kind of body declared by a request's single `Content-Type`.
fn declared_kind(headers: &HeaderMap) -> Result<Option<Kind>, Rejection> {
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

/// Strict JSON: valid UTF-8, one value, no duplicate object keys and no keys that differ
/// only in case, at any depth.
pub fn json(bytes: &[u8]) -> Result<Json, Rejection> {
    let text = std::str::from_utf8(bytes).map_err(|_| Rejection::BodyNotUtf8)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let refused = RefCell::new(None);
    let parsed = Strict { refused: &refused }.deserialize(&mut de);
    if let Some(rejection) = refused.into_inner() {
        return Err(rejection);
    }
    let value = parsed.map_err(|e| Rejection::BadJson(e.to_string()))?;
    de.end().map_err(|e| Rejection::BadJson(e.to_string()))?;
    Ok(value)
}

/// A `application/x-www-form-urlencoded` body as the document its bracketed names describe
/// (see [`form`](mod@form) for the exact reading).
pub fn form(bytes: &[u8]) -> Result<Json, Rejection> {
    form::parse(bytes)
}

/// Refuse an object, at any depth, with two keys a case-insensitive binder reads as one.
pub(crate) fn check_case(doc: &Json) -> Result<(), Rejection> {
    match doc {
        Json::Object(map) => {
            if map.len() > 1 {
                let mut seen: HashMap<String, &str> = HashMap::with_capacity(map.len());
                for key in map.keys() {
                    if let Some(other) = seen.insert(names::fold(key), key) {
                        return Err(Rejection::CaseVariantKey(clip(other), clip(key)));
                    }
                }
            }
            map.values().try_for_each(check_case)
        }
        Json::Array(items) => items.iter().try_for_each(check_case),
        _ => Ok(()),
    }
}

/// Deserialises a JSON value like `serde_json::Value` does, but stops at a duplicate key or
/// two keys that differ only in case, leaving the reason in `refused`.
#[derive(Clone, Copy)]
struct Strict<'r> {
    refused: &'r RefCell<Option<Rejection>>,
}

impl Strict<'_> {
    fn refuse<E: serde::de::Error>(self, rejection: Rejection) -> E {
        let message = rejection.to_string();
        self.refused.replace(Some(rejection));
        E::custom(message)
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
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
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Json, A::Error> {
        let mut map = Map::new();
        // Folded key -> the key as sent; only built once an object has a second key.
        let mut folded: HashMap<String, String> = HashMap::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(self.refuse(Rejection::DuplicateKey(clip(&key))));
            }
            if !map.is_empty() {
                if folded.is_empty() {
                    folded.extend(map.keys().map(|k| (names::fold(k), k.clone())));
                }
                if let Some(other) = folded.insert(names::fold(&key), key.clone()) {
                    return Err(self.refuse(Rejection::CaseVariantKey(clip(&other), clip(&key))));
                }
            }
            let value = access.next_value_seed(self)?;
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
