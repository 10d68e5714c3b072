//! Trace context: which trace an action's span joins, and the W3C headers the tool receives.
//!
//! One trace per task. When the agent sends `traceparent`, toolgate's span is a child of the
//! agent's span in the agent's trace. Otherwise the trace id is derived from the agent and the
//! task id, so every action of a task lands in the same trace across requests and restarts.
//! The agent's default task (`default-N`, which restarts numbering with the process) is salted
//! with a per-process value, so two runs' default tasks never merge into one trace. In
//! toolgate's own trace a task has a root span (`task <id>`, see [`roots`]) and its actions
//! are children of it.

pub mod roots;

use std::sync::LazyLock;
use std::time::{Instant, SystemTime};

use http::HeaderMap;
use pingora::http::RequestHeader;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use toolgate_policy::accept::Accepted;
use toolgate_policy::chain::SpanRef;
use toolgate_policy::classify::mcp::Rpc;

use crate::identify::TraceParent;
use crate::pipeline::Exchange;

/// The W3C trace context request headers.
pub const TRACEPARENT: &str = "traceparent";
/// The vendor-specific companion of `traceparent`, passed through unchanged.
pub const TRACESTATE: &str = "tracestate";

/// Salt for default-task trace ids: unique to this process.
static PROCESS_SALT: LazyLock<[u8; 16]> = LazyLock::new(rand::random);

/// Where an exchange sits in its task's trace, and what its span reports.
#[derive(Debug, Clone)]
pub struct Context {
    /// Wall-clock start of the exchange: the span's start time.
    pub started_at: SystemTime,
    /// The trace the action's span belongs to.
    pub trace_id: [u8; 16],
    /// The agent's span, when it sent a valid `traceparent`.
    pub parent: Option<TraceParent>,
    /// The span of the task's previous action: the link that chains the task.
    pub previous: Option<SpanRef>,
    /// When policy evaluation finished (the "policy evaluated" event).
    pub evaluated_at: Option<Instant>,
    /// The destination as classified (never the query, which may carry secrets).
    pub target: Option<Target>,
    /// For an MCP POST: each JSON-RPC message's method, id and tool (never its arguments).
    pub mcp: Vec<Mcp>,
}

/// Longest MCP method, tool name, request id, session id or protocol version put on a span:
/// they come from the agent's request.
pub const MAX_MCP_VALUE_BYTES: usize = 128;

/// What an action's span says about its MCP message (the MCP semantic conventions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mcp {
    /// The action the message was classified as (which member a span describes).
    pub action: std::sync::Arc<str>,
    /// `mcp.method.name`; `None` for a response to the server.
    pub method: Option<String>,
    /// `jsonrpc.request.id`, as a string; `None` for a notification (or a null id).
    pub request_id: Option<String>,
    /// `gen_ai.tool.name` of a `tools/call`: its `params.name`.
    pub tool: Option<String>,
    /// `mcp.session.id`, from `Mcp-Session-Id`.
    pub session: Option<String>,
    /// `mcp.protocol.version`, from `MCP-Protocol-Version`.
    pub protocol_version: Option<String>,
}

impl Mcp {
    /// One entry per JSON-RPC message of an MCP POST (`rpc`, what classification read),
    /// none for any other request.
    pub fn of(rpc: Option<&Rpc>, headers: &HeaderMap) -> Vec<Mcp> {
        let Some(rpc) = rpc else {
            return Vec::new();
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(bounded)
        };
        let session = header("mcp-session-id");
        let protocol_version = header("mcp-protocol-version");
        rpc.members
            .iter()
            .map(|m| {
                let method = m.message.get("method").and_then(Json::as_str);
                let tool = match method {
                    Some("tools/call") => m
                        .message
                        .get("params")
                        .and_then(|p| p.get("name"))
                        .and_then(Json::as_str)
                        .and_then(bounded),
                    _ => None,
                };
                let request_id = match &m.id {
                    Some(Json::String(s)) => bounded(s),
                    Some(Json::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                Mcp {
                    action: m.classification.action.clone(),
                    method: method.and_then(bounded),
                    request_id,
                    tool,
                    session: session.clone(),
                    protocol_version: protocol_version.clone(),
                }
            })
            .collect()
    }
}

/// `s` if it is 1 to [`MAX_MCP_VALUE_BYTES`] printable characters (no control characters);
/// anything else is left off the span rather than cut into something misleading.
fn bounded(s: &str) -> Option<String> {
    (!s.is_empty() && s.len() <= MAX_MCP_VALUE_BYTES && !s.chars().any(char::is_control))
        .then(|| s.to_string())
}

/// The HTTP destination an action addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Target {
    /// The destination of an accepted request, in canonical form.
    pub fn of(accepted: &Accepted) -> Target {
        Target {
            scheme: if accepted.tls { "https" } else { "http" },
            host: accepted.host.clone(),
            port: accepted.port,
            path: accepted.request.path.clone(),
        }
    }
}

impl Default for Context {
    fn default() -> Self {
        Context {
            started_at: SystemTime::now(),
            // Until the task is known (and for requests refused before it is), a fresh trace.
            trace_id: rand::random(),
            parent: None,
            previous: None,
            evaluated_at: None,
            target: None,
            mcp: Vec::new(),
        }
    }
}

impl Context {
    /// The wall-clock time of `at`, an instant during this exchange.
    pub fn wall_clock(&self, started: Instant, at: Instant) -> SystemTime {
        self.started_at + at.saturating_duration_since(started)
    }
}

/// The trace id of `task` for `agent` when the agent sent no trace context. A task the agent
/// did not name (`named` false) gets a per-process salt.
pub fn task_trace_id(agent: &str, task: &str, named: bool) -> [u8; 16] {
    // Asked twice per request for the same task, and a task's requests come in runs: the
    // last answer is kept per thread (a SHA-256 of two blocks is ~3.5 k instructions).
    type Last = Option<(String, String, bool, [u8; 16])>;
    thread_local! {
        static LAST: std::cell::RefCell<Last> = const { std::cell::RefCell::new(None) };
    }
    let cached = LAST.with(|l| {
        l.try_borrow().ok().and_then(|last| match &*last {
            Some((a, t, n, id)) if a == agent && t == task && *n == named => Some(*id),
            _ => None,
        })
    });
    if let Some(id) = cached {
        return id;
    }
    let id = derive_task_trace_id(agent, task, named);
    LAST.with(|l| {
        if let Ok(mut last) = l.try_borrow_mut() {
            match &mut *last {
                Some((a, t, n, old)) => {
                    a.clear();
                    a.push_str(agent);
                    t.clear();
                    t.push_str(task);
                    *n = named;
                    *old = id;
                }
                None => *last = Some((agent.to_string(), task.to_string(), named, id)),
            }
        }
    });
    id
}

fn derive_task_trace_id(agent: &str, task: &str, named: bool) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"toolgate task trace\0");
    h.update(agent.as_bytes());
    h.update([0]);
    h.update(task.as_bytes());
    if !named {
        h.update(*PROCESS_SALT);
    }
    let digest = h.finalize();
    let mut id = [0u8; 16];
    for (to, from) in id.iter_mut().zip(digest.iter()) {
        *to = *from;
    }
    if id == [0; 16] {
        // All zeros is the invalid trace id; a digest that hits it still needs a trace.
        id[15] = 1;
    }
    id
}

/// Put `x` (whose task id is set) into its trace: the agent's, else its task's.
pub fn join(x: &mut Exchange, parent: Option<TraceParent>, agent: &str, named_task: bool) {
    x.trace.parent = parent;
    x.trace.trace_id = match parent {
        Some(p) => p.trace_id,
        None => task_trace_id(agent, &x.task_id, named_task),
    };
    x.trace_id = hex::encode(x.trace.trace_id);
}

/// `00-<trace>-<span>-<flags>`.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        hex::encode(trace_id),
        hex::encode(span_id),
        if sampled { "01" } else { "00" }
    )
}

/// Send the tool toolgate's span as its parent. `exporting` says whether toolgate records the
/// span (then it is sampled); otherwise the agent's sampling decision is passed on. The agent's
/// `tracestate` travels with its own trace and is dropped when toolgate started the trace.
pub fn propagate(req: &mut RequestHeader, x: &Exchange, exporting: bool) {
    let sampled = exporting || x.trace.parent.is_some_and(|p| p.flags & 1 == 1);
    let header = traceparent(&x.trace.trace_id, &x.span_id, sampled);
    // Only fails on invalid header bytes, which hex digits and dashes are not.
    let _ = req.insert_header(TRACEPARENT, header);
    if x.trace.parent.is_none() {
        req.remove_header(TRACESTATE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_trace_id_is_stable_and_distinct_per_agent_and_task() {
        let a = task_trace_id("spiffe://a", "T-1", true);
        assert_eq!(a, task_trace_id("spiffe://a", "T-1", true));
        assert_ne!(a, task_trace_id("spiffe://a", "T-2", true));
        assert_ne!(a, task_trace_id("spiffe://b", "T-1", true));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            task_trace_id("ab", "c", true),
            task_trace_id("a", "bc", true)
        );
    }

    #[test]
    fn default_tasks_are_salted_per_process() {
        let named = task_trace_id("spiffe://a", "default-1", true);
        let default = task_trace_id("spiffe://a", "default-1", false);
        assert_ne!(named, default);
        assert_eq!(default, task_trace_id("spiffe://a", "default-1", false));
    }

    #[test]
    fn traceparent_is_w3c_formatted() {
        assert_eq!(
            traceparent(&[0xab; 16], &[0x01; 8], true),
            "00-abababababababababababababababab-0101010101010101-01"
        );
        assert_eq!(
            traceparent(&[0xab; 16], &[0x01; 8], false),
            "00-abababababababababababababababab-0101010101010101-00"
        );
    }
}
