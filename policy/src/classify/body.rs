//! Body rules: `match.body` (JSON pointer → expected value) and `body:` attributes, compiled
//! at load time into pointers and matchers, evaluated against a parsed JSON or form body.

use std::fmt;
use std::str::FromStr;

use serde_json::Value as Json;

use crate::normalise::{clip, names};

/// An RFC 6901 JSON pointer, split into unescaped reference tokens at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    tokens: Vec<String>,
}

/// Why a JSON pointer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("a JSON pointer starts with '/' (e.g. /transition/id), got {0:?}")]
    NoLeadingSlash(String),
    #[error("{0:?}: '~' must be followed by 0 ('~') or 1 ('/')")]
    BadEscape(String),
    #[error("{0:?}: more than {MAX_POINTER_TOKENS} tokens")]
    TooLong(String),
}

/// Deepest pointer the catalog accepts.
pub const MAX_POINTER_TOKENS: usize = 32;

impl FromStr for JsonPointer {
    type Err = PointerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix('/')
            .ok_or_else(|| PointerError::NoLeadingSlash(s.to_string()))?;
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => return Err(PointerError::BadEscape(s.to_string())),
                }
            }
            tokens.push(token);
        }
        if tokens.len() > MAX_POINTER_TOKENS {
            return Err(PointerError::TooLong(s.to_string()));
        }
        Ok(JsonPointer { tokens })
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tokens {
            write!(f, "/{}", t.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

impl JsonPointer {
    /// The value this pointer names in `doc`, if any. Array indices are decimal without
    /// leading zeros, as RFC 6901 requires; anything else names nothing.
    pub fn lookup<'a>(&self, doc: &'a Json) -> Option<&'a Json> {
        let mut at = doc;
        for token in &self.tokens {
            at = self.step(at, token)?;
        }
        Some(at)
    }

    /// The value this pointer names in `doc`, as a tool that binds keys case-insensitively
    /// may read it too: where an object has no key spelled exactly as a token but has one that
    /// differs only in case (`ID` for `id`), the pointer is ambiguous and the reading refused.
    /// Bodies never hold two keys that differ only in case (`body::json` refuses them), so
    /// there is at most one such key.
    pub fn find<'a>(&self, doc: &'a Json) -> Result<Option<&'a Json>, CaseVariant> {
        let mut at = doc;
        for token in &self.tokens {
            at = match at {
                Json::Object(map) => match map.get(token) {
                    Some(v) => v,
                    None => {
                        if let Some(key) = map.keys().find(|k| names::same_folded(k, token)) {
                            return Err(CaseVariant {
                                pointer: self.to_string(),
                                key: clip(key),
                            });
                        }
                        return Ok(None);
                    }
                },
                Json::Array(_) => match self.step(at, token) {
                    Some(v) => v,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            };
        }
        Ok(Some(at))
    }

    fn step<'a>(&self, at: &'a Json, token: &str) -> Option<&'a Json> {
        match at {
            Json::Object(map) => map.get(token),
            Json::Array(items) => {
                let canonical = token == "0" || !token.starts_with('0');
                if !canonical || !token.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                items.get(token.parse::<usize>().ok()?)
            }
            _ => None,
        }
    }

    /// The first token (the top-level key this pointer reads).
    pub fn first(&self) -> Option<&str> {
        self.tokens.first().map(String::as_str)
    }
}

/// A value a body field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    String(String),
    Number(f64),
    Bool(bool),
}

impl Scalar {
    /// From a config value: a string, a number or a boolean.
    pub fn from_json(v: &Json) -> Option<Scalar> {
        match v {
            Json::String(s) => Some(Scalar::String(s.clone())),
            Json::Number(n) => n.as_f64().map(Scalar::Number),
            Json::Bool(b) => Some(Scalar::Bool(*b)),
            _ => None,
        }
    }

    /// Whether a body value equals this one. The comparison is deliberately loose across
    /// JSON types (`31` matches `"31"`, `true` matches `"true"`): tools commonly coerce, so a
    /// rule must not be dodged by sending the same value with another type.
    pub fn matches(&self, v: &Json) -> bool {
        let number = |v: &Json| match v {
            Json::Number(n) => n.as_f64(),
            Json::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            _ => None,
        };
        match (self, v) {
            (Scalar::String(want), Json::String(got)) if want == got => true,
            (Scalar::Bool(want), Json::Bool(got)) => want == got,
            (Scalar::Bool(want), Json::String(got)) => got == if *want { "true" } else { "false" },
            (Scalar::String(want), Json::Bool(got)) => want == if *got { "true" } else { "false" },
            (Scalar::Number(want), got) => number(got) == Some(*want),
            (Scalar::String(want), got @ Json::Number(_)) => {
                let want = want.trim().parse::<f64>().ok();
                want.is_some() && want == number(got)
            }
            (Scalar::String(want), Json::String(got)) => {
                // Two spellings of one number ("31" and "31.0") are the same value to a tool.
                let (a, b) = (want.trim().parse::<f64>(), got.trim().parse::<f64>());
                matches!((a, b), (Ok(a), Ok(b)) if a == b && a.is_finite())
            }
            _ => false,
        }
    }
}

/// What a body field must be for a rule to hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    One(Scalar),
    /// `{in: [...]}`: any of these.
    In(Vec<Scalar>),
}

impl Expect {
    /// Whether `v` satisfies the expectation.
    pub fn matches(&self, v: &Json) -> bool {
        match self {
            Expect::One(s) => s.matches(v),
            Expect::In(options) => options.iter().any(|s| s.matches(v)),
        }
    }
}

/// One `match.body` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyRule {
    /// The field the rule reads.
    pub pointer: JsonPointer,
    /// What the field must be.
    pub expect: Expect,
}

impl BodyRule {
    /// Whether the parsed body satisfies this rule (a missing field never does); refused
    /// where the field is there only in another case (see [`JsonPointer::find`]).
    pub fn holds(&self, body: &Json) -> Result<bool, CaseVariant> {
        Ok(self
            .pointer
            .find(body)?
            .is_some_and(|v| self.expect.matches(v)))
    }
}

/// A body key that a pointer names only up to case (`{"transition": {"ID": "31"}}` for
/// `/transition/id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseVariant {
    /// The pointer the catalog reads.
    pub pointer: String,
    /// The key the body has instead.
    pub key: String,
}
