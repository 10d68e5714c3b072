//! MCP admission, between classification and the decision: the `Mcp-Param-*` headers of a
//! `tools/call` against the tool's definition, the task and trace context a request's
//! `params._meta` carries, and what policy is told about a tool's definition.
//!
//! `_meta` identity: `params._meta["toolgate/task"]` names the task as `x-toolgate-task`
//! does, and `params._meta.traceparent` (where the MCP SDKs inject W3C trace context) joins
//! the agent's trace as the `traceparent` header does. A task named both in `_meta` and by
//! the header or a verified task token must be the same task, or the request is refused —
//! never one silently preferred. The `traceparent` header, when present, wins over `_meta`'s:
//! HTTP instrumentation makes it the closer parent of toolgate's span.

use http::HeaderMap;
use serde_json::Value as Json;
use toolgate_policy::classify::mcp::definition::{self, Lock};
use toolgate_policy::classify::mcp::headers::{self, PARAM_PREFIX};
use toolgate_policy::classify::mcp::params;
use toolgate_policy::classify::mcp::Rpc;
use toolgate_policy::classify::{Protocol, Tool};
use toolgate_policy::evaluate::set_definition;
use toolgate_policy::evaluate::Value;
use toolgate_policy::prepare::Prepared;

use super::listing::Listing;
use super::McpRefusal;
use crate::gateway::{Gateway, Snapshot};
use crate::identify::{self, Identity};
use crate::pipeline::Exchange;

/// Check an MCP POST's `Mcp-Param-*` headers and enter the task its `_meta` names.
pub async fn admit(
    gw: &Gateway,
    snapshot: &Snapshot,
    prepared: &Prepared,
    headers: &HeaderMap,
    x: &mut Exchange,
) -> Result<(), McpRefusal> {
    let Some(rpc) = prepared.rpc.as_ref() else {
        return Ok(());
    };
    let tool = prepared
        .accepted
        .tool
        .and_then(|t| snapshot.config.catalog.tool(t));
    if let Some(tool) = tool {
        params(gw, snapshot, rpc, &tool.name, headers)?;
    }
    meta(gw, snapshot, rpc, headers, x).await
}

/// `Mcp-Param-*`: only on a single `tools/call`, each as the tool's definition declares.
fn params(
    gw: &Gateway,
    snapshot: &Snapshot,
    rpc: &Rpc,
    tool: &str,
    headers: &HeaderMap,
) -> Result<(), McpRefusal> {
    let fail = |message: String| headers::mismatch(rpc, message);
    let present = headers.keys().any(|k| k.as_str().starts_with(PARAM_PREFIX));
    let call = match rpc.members.as_slice() {
        [one] if one.method.as_deref() == Some("tools/call") && !rpc.batch => one,
        _ if present => return Err(fail(
            "Mcp-Param-* headers mirror the arguments of one tools/call; this request is not one"
                .into(),
        )
        .into()),
        _ => return Ok(()),
    };
    let params = call.message.get("params");
    let name = params
        .and_then(|p| p.get("name"))
        .and_then(Json::as_str)
        .unwrap_or_default();
    let arguments = params
        .and_then(|p| p.get("arguments"))
        .and_then(Json::as_object);
    let lock = snapshot.config.mcp.locks.get(tool).map(|l| &**l);
    let declared = definition::declared_params(&gw.definitions, tool, name, lock);
    params::check_params(name, declared.as_deref(), arguments, headers, fail)?;
    Ok(())
}

/// Enter the task and trace context `_meta` names, if the request names them nowhere else.
async fn meta(
    gw: &Gateway,
    snapshot: &Snapshot,
    rpc: &Rpc,
    headers: &HeaderMap,
    x: &mut Exchange,
) -> Result<(), McpRefusal> {
    let config = &snapshot.config;
    let header_task = headers
        .get(&config.chain.task_header)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let header_parent = headers.contains_key("traceparent");
    let meta_parent = rpc
        .traceparent
        .as_deref()
        .and_then(identify::parse_traceparent)
        .filter(|_| !header_parent);
    let conflict = |source_name: String, given: &str, meta: &str| McpRefusal::TaskConflict {
        meta: meta.to_string(),
        source_name,
        given: given.to_string(),
    };
    // A token (task or delegation) that named the task outranks the header; either way the
    // task of `_meta` must be the same one.
    let token = if x.delegation.is_some() {
        Some("the delegation token")
    } else if x.task_verified {
        Some("the task token")
    } else {
        None
    };
    let task = match rpc.task.as_deref() {
        Some(meta) => match token {
            Some(source) if x.task_id != meta => {
                return Err(conflict(source.into(), &x.task_id, meta))
            }
            Some(_) => None,
            None => match header_task.as_deref() {
                Some(given) if given != meta => {
                    return Err(conflict(config.chain.task_header.to_string(), given, meta))
                }
                Some(_) => None,
                None => Some(meta.to_string()),
            },
        },
        None => None,
    };
    let named = token.is_some() || header_task.is_some() || header_parent;
    if task.is_none() && (meta_parent.is_none()) {
        return Ok(());
    }
    let task_id = match (task, named) {
        (Some(t), _) => Some(t),
        (None, true) => Some(x.task_id.clone()),
        // Unnamed: the trace groups the requests, as the traceparent header would.
        (None, false) => meta_parent.map(|p| hex::encode(p.trace_id)),
    };
    let parent = if header_parent {
        x.trace.parent
    } else {
        meta_parent
    };
    let identity = Identity {
        task_id,
        parent,
        task_claims: x.task_claims.clone(),
        began: x.task_began,
        delegation: x.delegation.clone(),
        delegation_token: x.delegation_token.clone(),
    };
    identify::enter(gw, config, identity, x).await;
    Ok(())
}

/// The evaluate stage's hook: a `tools/call` of an MCP tool learns what toolgate knows of its
/// definition (`input.action.definition`); a `tools/list` keeps its input, on which each
/// listed tool will be decided.
pub fn input(
    gw: &Gateway,
    snapshot: &Snapshot,
    prepared: &Prepared,
    tool: Option<&Tool>,
    input: &mut Value,
    x: &mut Exchange,
) {
    let Some(tool) = tool.filter(|t| t.protocol == Protocol::Mcp) else {
        return;
    };
    let Some(message) = prepared
        .body
        .as_ref()
        .filter(|_| !prepared.is_rpc() || is_single(prepared))
    else {
        return;
    };
    match message.get("method").and_then(Json::as_str) {
        Some("tools/call") => {
            let name = message
                .get("params")
                .and_then(|p| p.get("name"))
                .and_then(Json::as_str)
                .unwrap_or_default();
            let lock: Option<&Lock> = snapshot.config.mcp.locks.get(&*tool.name).map(|l| &**l);
            let status = gw.definitions.status(&tool.name, name, lock);
            set_definition(input, status.to_value());
        }
        Some("tools/list") => {
            let Some(id) = message.get("id").cloned() else {
                return;
            };
            let data = serde_json::json!({
                "decision_id": &x.decision_id,
                "action": &*x.action,
                "trace_id": &x.trace_id,
            });
            x.listing
                .get_or_insert_with(|| Listing::new(input.clone(), data))
                .add(id);
        }
        _ => {}
    }
}

/// A single-message MCP POST (its body is the message).
fn is_single(prepared: &Prepared) -> bool {
    prepared.rpc.as_ref().is_some_and(|r| !r.batch)
}
