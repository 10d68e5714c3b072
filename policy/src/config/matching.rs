//! Validation of the keys that classify by body and protocol: `match.body`, `body:`
//! attributes, `protocol` and `limits.max_body_bytes`. Every problem is collected with its
//! field path, as in `validate`.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::ConfigError;

use crate::classify::{AttributeSource, BodyRule, Expect, JsonPointer, Protocol, Scalar};

/// The most body toolgate buffers: pingora replays at most 64 KiB of a body read before the
/// request is forwarded (its retry buffer), so a larger cap could not be honoured.
pub const MAX_BODY_BYTES: usize = 65_536;

/// Most entries one `match.body` may hold, and most choices in one `{in: [...]}`.
pub const MAX_RULES: usize = 64;

fn push(errors: &mut Vec<ConfigError>, path: impl Into<String>, message: impl Into<String>) {
    errors.push(ConfigError {
        path: path.into(),
        message: message.into(),
    });
}

/// `tools[i].actions[j].match.body` → compiled rules.
pub(super) fn body_rules(
    errors: &mut Vec<ConfigError>,
    path: &str,
    raw: Option<&BTreeMap<String, Json>>,
) -> Vec<BodyRule> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let path = format!("{path}.match.body");
    if raw.is_empty() {
        push(
            errors,
            &path,
            "must name at least one JSON pointer, or be left out",
        );
    }
    if raw.len() > MAX_RULES {
        push(errors, &path, format!("at most {MAX_RULES} entries"));
    }
    let mut rules = Vec::new();
    for (pointer, value) in raw {
        let epath = format!("{path}.{pointer:?}");
        let pointer = match pointer.parse::<JsonPointer>() {
            Ok(p) => p,
            Err(e) => {
                push(errors, &epath, e.to_string());
                continue;
            }
        };
        if let Some(expect) = expect(errors, &epath, value) {
            rules.push(BodyRule { pointer, expect });
        }
    }
    rules
}

fn expect(errors: &mut Vec<ConfigError>, path: &str, value: &Json) -> Option<Expect> {
    let scalar_error = "must be a string, a number, a boolean or {in: [...]}";
    match value {
        Json::Object(map) => {
            let Some(options) = map.get("in") else {
                push(errors, path, scalar_error);
                return None;
            };
            for key in map.keys().filter(|k| *k != "in") {
                push(errors, format!("{path}.{key}"), "unknown key");
            }
            let Json::Array(options) = options else {
                push(errors, format!("{path}.in"), "must be a list of values");
                return None;
            };
            if options.is_empty() || options.len() > MAX_RULES {
                push(
                    errors,
                    format!("{path}.in"),
                    format!("must list 1 to {MAX_RULES} values"),
                );
                return None;
            }
            let mut scalars = Vec::new();
            for (i, o) in options.iter().enumerate() {
                match Scalar::from_json(o) {
                    Some(s) => scalars.push(s),
                    None => push(
                        errors,
                        format!("{path}.in[{i}]"),
                        "must be a string, a number or a boolean",
                    ),
                }
            }
            (scalars.len() == options.len()).then_some(Expect::In(scalars))
        }
        other => match Scalar::from_json(other) {
            Some(s) => Some(Expect::One(s)),
            None => {
                push(errors, path, scalar_error);
                None
            }
        },
    }
}

/// A `body:/pointer` attribute source.
pub(super) fn body_attribute(
    errors: &mut Vec<ConfigError>,
    path: &str,
    pointer: &str,
) -> Option<AttributeSource> {
    match pointer.parse::<JsonPointer>() {
        Ok(p) => Some(AttributeSource::Body(p)),
        Err(e) => {
            push(errors, path, e.to_string());
            None
        }
    }
}

/// `tools[i].protocol`; an MCP tool takes its actions from JSON-RPC, so it lists none.
pub(super) fn protocol(
    errors: &mut Vec<ConfigError>,
    path: &str,
    raw: Option<&str>,
    actions: usize,
) -> Protocol {
    match raw {
        None | Some("http") => Protocol::Http,
        Some("mcp") => {
            if actions > 0 {
                push(
                    errors,
                    format!("{path}.actions"),
                    "an MCP tool's actions are its JSON-RPC methods (<tool>.<name> for tools/call); remove `actions`",
                );
            }
            Protocol::Mcp
        }
        Some(other) => {
            push(
                errors,
                format!("{path}.protocol"),
                format!("{other:?} must be `mcp` or `http`"),
            );
            Protocol::Http
        }
    }
}

/// `limits.max_body_bytes`, default 64 KiB. A larger value is accepted (configurations
/// written for other proxies carry one), but [`body_cap`] never exceeds 64 KiB.
pub(super) fn max_body_bytes(raw: Option<usize>) -> usize {
    raw.unwrap_or(MAX_BODY_BYTES)
}

/// The most body bytes toolgate reads to classify a request: `limits.max_body_bytes`, but at
/// most the 64 KiB pingora can replay to the tool.
pub fn body_cap(limits: &super::Limits) -> usize {
    limits.max_body_bytes.min(MAX_BODY_BYTES)
}
