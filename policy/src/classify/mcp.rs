//! MCP (streamable HTTP) classification: a POST carries one JSON-RPC message or a batch of
//! them, each becoming an action (DESIGN.md §4). `tools/call` is `<tool>.<params.name>` with
//! `params.arguments` as attributes; any other method is `<tool>.mcp.<method>` with '/'
//! replaced by '_', with the members of `params` (but `_meta`) as attributes. The methods
//! that name what they act on must name it: `resources/read` a `params.uri`, `prompts/get` a
//! `params.name`, `completion/complete` a `params.ref` (whose `name` or `uri` becomes an
//! attribute too). A GET (the server's event stream) is `<tool>.mcp.stream`, a DELETE (ending
//! the session) `<tool>.mcp.terminate`.
//!
//! Both eras of the protocol arrive here: the 2025 session-based one and the 2026-07-28
//! stateless one, whose requests mirror their method and name into headers
//! ([`headers`]) and carry their protocol version in `params._meta`. `_meta` may also carry
//! the task ([`TASK_META`]) and the W3C trace context (`traceparent`, as the SDKs put it).

pub mod definition;
pub mod headers;
pub mod params;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::Method;
use serde_json::Value as Json;

use super::Classification;
use crate::normalise::Rejection;

/// Most messages one batch may hold: each is a policy evaluation and a chain entry.
pub const MAX_BATCH: usize = 64;

/// The `params._meta` key that names the task, like the `x-toolgate-task` header.
pub const TASK_META: &str = "toolgate/task";
/// The `params._meta` key of the W3C trace context, as the MCP SDKs inject it.
pub const TRACEPARENT_META: &str = "traceparent";
/// The longest task id accepted (as for the task header).
pub const MAX_TASK_ID: usize = 128;

/// The JSON-RPC content of one MCP POST.
#[derive(Debug, Clone, PartialEq)]
pub struct Rpc {
    /// Whether the body was a JSON array (a batch), even of one message.
    pub batch: bool,
    /// The messages, in order.
    pub members: Vec<Member>,
    /// The task the messages' `_meta` names ([`TASK_META`]); every member that names one
    /// names the same.
    pub task: Option<String>,
    /// The first `_meta.traceparent` among the messages, as sent.
    pub traceparent: Option<String>,
}

/// One JSON-RPC message and its action.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The request id; `None` for a notification (or a response, which has no method).
    pub id: Option<Json>,
    /// The JSON-RPC method; `None` for a response.
    pub method: Option<Arc<str>>,
    /// The message's action and attributes.
    pub classification: Classification,
    /// The message as sent: what policy sees as `input.request.body`.
    pub message: Json,
}

/// The action of a non-POST request to an MCP tool.
pub fn http_action(tool: &str, method: &Method) -> Option<Arc<str>> {
    let name = match *method {
        Method::GET => "stream",
        Method::DELETE => "terminate",
        _ => return None,
    };
    Some(Arc::from(format!("{tool}.mcp.{name}")))
}

/// Classify the parsed body of a POST to MCP tool `tool` (catalog index) named `name`.
pub fn classify(tool: usize, name: &str, body: &Json) -> Result<Rpc, Rejection> {
    let bad = |why: &str| Rejection::BadRpc(why.to_string());
    let (batch, messages) = match body {
        Json::Array(items) if items.is_empty() => return Err(bad("empty batch")),
        Json::Array(items) if items.len() > MAX_BATCH => {
            return Err(Rejection::BadRpc(format!(
                "a batch of {} messages; at most {MAX_BATCH}",
                items.len()
            )))
        }
        Json::Array(items) => (true, items.as_slice()),
        one => (false, std::slice::from_ref(one)),
    };
    let members = messages
        .iter()
        .map(|m| member(tool, name, m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut task: Option<String> = None;
    let mut traceparent: Option<String> = None;
    for m in messages {
        let meta = meta(m)?;
        if let Some(t) = meta.task {
            match &task {
                Some(seen) if *seen != t => {
                    return Err(bad(&format!(
                        "the messages of this batch name different tasks in params._meta[{TASK_META:?}] ({seen:?}, {t:?})"
                    )))
                }
                _ => task = Some(t),
            }
        }
        if traceparent.is_none() {
            traceparent = meta.traceparent;
        }
    }
    Ok(Rpc {
        batch,
        members,
        task,
        traceparent,
    })
}

/// What a message's `params._meta` says about the task and the trace.
struct Meta {
    task: Option<String>,
    traceparent: Option<String>,
}

fn meta(message: &Json) -> Result<Meta, Rejection> {
    let bad = |why: String| Rejection::BadRpc(why);
    let none = Meta {
        task: None,
        traceparent: None,
    };
    let Some(meta) = message.get("params").and_then(|p| p.get("_meta")) else {
        return Ok(none);
    };
    let Json::Object(meta) = meta else {
        return Err(bad("params._meta must be an object".into()));
    };
    let task = match meta.get(TASK_META) {
        None => None,
        Some(Json::String(t)) if valid_task(t) => Some(t.clone()),
        Some(_) => {
            return Err(bad(format!(
                "params._meta[{TASK_META:?}] must be 1 to {MAX_TASK_ID} visible ASCII characters"
            )))
        }
    };
    let traceparent = meta
        .get(TRACEPARENT_META)
        .and_then(Json::as_str)
        .map(str::to_string);
    Ok(Meta { task, traceparent })
}

/// Whether `task` may name a task: 1 to [`MAX_TASK_ID`] visible ASCII characters.
pub fn valid_task(task: &str) -> bool {
    !task.is_empty()
        && task.len() <= MAX_TASK_ID
        && task.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn member(tool: usize, name: &str, message: &Json) -> Result<Member, Rejection> {
    let bad = |why: &str| Rejection::BadRpc(why.to_string());
    let Json::Object(m) = message else {
        return Err(bad("a message must be a JSON object"));
    };
    if m.get("jsonrpc").and_then(Json::as_str) != Some("2.0") {
        return Err(bad("\"jsonrpc\" must be \"2.0\""));
    }
    let id = match m.get("id") {
        None => None,
        Some(id @ (Json::String(_) | Json::Number(_) | Json::Null)) => Some(id.clone()),
        Some(_) => return Err(bad("\"id\" must be a string, a number or null")),
    };
    let (action, attributes) = match m.get("method") {
        Some(Json::String(method)) => classify_method(name, method, m.get("params"))?,
        Some(_) => return Err(bad("\"method\" must be a string")),
        // A response to a request the server sent (sampling, elicitation, roots).
        None if m.contains_key("result") || m.contains_key("error") => {
            if id.is_none() {
                return Err(bad("a response needs an \"id\""));
            }
            (format!("{name}.mcp.response"), Vec::new())
        }
        None => return Err(bad("a message needs a \"method\"")),
    };
    // Responses carry the server's id, not a request of the agent's to answer.
    let method: Option<Arc<str>> = m.get("method").and_then(Json::as_str).map(Arc::from);
    Ok(Member {
        id: id.filter(|_| method.is_some()),
        method,
        classification: Classification {
            tool: Some(tool),
            action: Arc::from(action),
            attributes,
        },
        message: message.clone(),
    })
}

type Attributes = Vec<(Arc<str>, Json)>;

fn classify_method(
    name: &str,
    method: &str,
    params: Option<&Json>,
) -> Result<(String, Attributes), Rejection> {
    let bad = |why: &str| Rejection::BadRpc(why.to_string());
    let params = match params {
        None => None,
        Some(Json::Object(p)) => Some(p),
        Some(Json::Array(_)) if method == "tools/call" => {
            return Err(bad("tools/call needs params as an object"))
        }
        Some(Json::Array(_)) => None,
        Some(_) => return Err(bad("\"params\" must be an object or an array")),
    };
    if method == "tools/call" {
        let p = params.ok_or_else(|| bad("tools/call needs params"))?;
        let tool = match p.get("name") {
            Some(Json::String(t)) if !t.is_empty() => t,
            _ => return Err(bad("tools/call needs params.name, the tool's name")),
        };
        let attributes = match p.get("arguments") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Object(args)) => args
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), v.clone()))
                .collect(),
            Some(_) => return Err(bad("tools/call params.arguments must be an object")),
        };
        return Ok((format!("{name}.{tool}"), attributes));
    }
    if method.is_empty() {
        return Err(bad("\"method\" is empty"));
    }
    let mut attributes: Attributes = params
        .map(|p| {
            p.iter()
                .filter(|(k, _)| *k != "_meta")
                .map(|(k, v)| (Arc::from(k.as_str()), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let named = |key: &str| -> Result<(), Rejection> {
        match params.and_then(|p| p.get(key)) {
            Some(Json::String(s)) if !s.is_empty() => Ok(()),
            _ => Err(Rejection::BadRpc(format!("{method} needs params.{key}"))),
        }
    };
    match method {
        "resources/read" => named("uri")?,
        "prompts/get" => named("name")?,
        "completion/complete" => {
            let reference = params.and_then(|p| p.get("ref"));
            let (key, value) = match reference.and_then(|r| r.get("type")).and_then(Json::as_str) {
                Some("ref/prompt") => ("name", reference.and_then(|r| r.get("name"))),
                Some("ref/resource") => ("uri", reference.and_then(|r| r.get("uri"))),
                _ => {
                    return Err(bad(
                        "completion/complete needs params.ref of type \"ref/prompt\" (with a name) or \"ref/resource\" (with a uri)",
                    ))
                }
            };
            let Some(value @ Json::String(_)) = value else {
                return Err(Rejection::BadRpc(format!(
                    "completion/complete needs params.ref.{key}"
                )));
            };
            // What the completion is for, as an attribute of its own (unless params has one).
            if !attributes.iter().any(|(k, _)| &**k == key) {
                attributes.push((Arc::from(key), value.clone()));
            }
        }
        _ => {}
    }
    Ok((
        format!("{name}.mcp.{}", method.replace('/', "_")),
        attributes,
    ))
}
