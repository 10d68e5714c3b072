//! MCP (streamable HTTP) classification: a POST carries one JSON-RPC message or a batch of
//! them, each becoming an action (DESIGN.md §4). `tools/call` is `<tool>.<params.name>` with
//! `params.arguments` as attributes; any other method is `<tool>.mcp.<method>` with '/'
//! replaced by '_', with the members of `params` (but `_meta`) as attributes. A GET (the
//! server's event stream) is `<tool>.mcp.stream`, a DELETE (ending the session)
//! `<tool>.mcp.terminate`.

use std::sync::Arc;

use http::Method;
use serde_json::Value as Json;

use super::Classification;
use crate::normalise::Rejection;

/// Most messages one batch may hold: each is a policy evaluation and a chain entry.
pub const MAX_BATCH: usize = 64;

/// The JSON-RPC content of one MCP POST.
#[derive(Debug, Clone, PartialEq)]
pub struct Rpc {
    /// Whether the body was a JSON array (a batch), even of one message.
    pub batch: bool,
    /// The messages, in order.
    pub members: Vec<Member>,
}

/// One JSON-RPC message and its action.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The request id; `None` for a notification (or a response, which has no method).
    pub id: Option<Json>,
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
    Ok(Rpc { batch, members })
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
    let answerable = m.contains_key("method");
    Ok(Member {
        id: id.filter(|_| answerable),
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
    let attributes = params
        .map(|p| {
            p.iter()
                .filter(|(k, _)| *k != "_meta")
                .map(|(k, v)| (Arc::from(k.as_str()), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok((
        format!("{name}.mcp.{}", method.replace('/', "_")),
        attributes,
    ))
}
