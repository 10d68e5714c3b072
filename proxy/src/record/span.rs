//! The span of one action (DESIGN.md §8): named after the action, kind CLIENT, with the
//! decision and its reason, the task's chain position, the credential's id (never its value),
//! the approval it was held for or went out on (`toolgate.approval.id`, `.status`,
//! `.approver`), the task's delegation (`toolgate.delegation.depth`, `.agents`) or end
//! (`toolgate.task.ended_at`, `.ended_by`) and the HTTP semantic-convention attributes, typed
//! (numbers as integers). It links to the previous action's span in the same task, and is a
//! child of the agent's span when the agent sent `traceparent`, else (for a delegated task) of
//! the delegating action's span, else of its task's root span (`task <id>`, [`task_span`]).
//!
//! GenAI-aware backends read the OpenTelemetry GenAI and MCP semantic conventions
//! (semantic-conventions-genai, `docs/gen-ai/gen-ai-spans.md` "Execute tool span" and
//! `docs/gen-ai/mcp.md`) and OpenInference's `openinference.span.kind`: every action span
//! also carries `gen_ai.operation.name: execute_tool`, `gen_ai.tool.name` (the action, or an
//! MCP `tools/call`'s tool), `gen_ai.tool.call.id` (the JSON-RPC id of a `tools/call`),
//! `gen_ai.agent.id`, `openinference.span.kind: TOOL`, and for MCP `mcp.method.name`,
//! `jsonrpc.request.id`, `mcp.session.id` and `mcp.protocol.version`. An MCP message that
//! is not a tool call (`initialize`, `tools/list`) gets the MCP attributes but no
//! `gen_ai.operation.name`/`gen_ai.tool.name`, as the MCP conventions ask. Never an argument
//! value: what the tool was asked stays in policy's input and the decision log's attributes.

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::pipeline::Exchange;
use crate::record::decision_log::Credential;
use crate::record::trace::roots::{Closed, Root, DECISIONS, OUTCOMES};

/// Longest span name: MCP action names come from the agent's request.
pub const MAX_NAME_BYTES: usize = 128;

static SCOPE: LazyLock<InstrumentationScope> = LazyLock::new(|| {
    InstrumentationScope::builder("toolgate")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
});

/// What is known only once the exchange is over.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub ended: SystemTime,
    /// The status the agent received (the tool's, or toolgate's own); 0 if none was sent.
    pub status: u16,
    pub method: &'a str,
    pub agent: &'a str,
    pub policy_revision: &'a str,
    /// pingora's error kind when the exchange failed without a status of its own.
    pub error: Option<&'a str>,
}

/// The `toolgate.decision` value: the policy's effect, or `reject` for a request refused
/// before policy ran (malformed or ambiguous).
pub fn decision(x: &Exchange) -> &'static str {
    match (x.effect, x.refused) {
        (Some(effect), _) => effect.as_str(),
        (None, Some(_)) => "reject",
        (None, None) => "none",
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn context(trace_id: [u8; 16], span_id: [u8; 8]) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    )
}

fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The OpenInference span kind of every action span.
pub const OPENINFERENCE_TOOL: &str = "TOOL";
/// The OpenInference span kind of a task's root span.
pub const OPENINFERENCE_AGENT: &str = "AGENT";

/// The span for exchange `x`, which injected `credential` (if any), as a root of its trace
/// unless the agent sent `traceparent`.
pub fn action_span(x: &Exchange, credential: Option<&Credential<'_>>, end: &End<'_>) -> SpanData {
    action_span_under(x, credential, end, None)
}

/// The GenAI, MCP and OpenInference attributes of `x`'s span (see the module doc).
fn genai_attributes(x: &Exchange, agent: &str, attributes: &mut Vec<KeyValue>) {
    // The message this span describes: the one whose action it is (a batch is logged under
    // the member that refused it, or its first).
    let mcp = x
        .trace
        .mcp
        .iter()
        .find(|m| m.action == x.action)
        .or_else(|| x.trace.mcp.first());
    let tool_call = match mcp {
        None => Some((cut(&x.action, MAX_NAME_BYTES).to_string(), None)),
        Some(m) => m
            .tool
            .as_ref()
            .map(|tool| (tool.clone(), m.request_id.clone())),
    };
    if let Some((tool, call_id)) = tool_call {
        attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
        attributes.push(KeyValue::new("gen_ai.tool.name", tool));
        if let Some(id) = call_id {
            attributes.push(KeyValue::new("gen_ai.tool.call.id", id));
        }
    }
    attributes.push(KeyValue::new("gen_ai.agent.id", agent.to_string()));
    attributes.push(KeyValue::new("openinference.span.kind", OPENINFERENCE_TOOL));
    if let Some(m) = mcp {
        if let Some(method) = &m.method {
            attributes.push(KeyValue::new("mcp.method.name", method.clone()));
        }
        if let Some(id) = &m.request_id {
            attributes.push(KeyValue::new("jsonrpc.request.id", id.clone()));
        }
        if let Some(session) = &m.session {
            attributes.push(KeyValue::new("mcp.session.id", session.clone()));
        }
        if let Some(version) = &m.protocol_version {
            attributes.push(KeyValue::new("mcp.protocol.version", version.clone()));
        }
    }
}

/// [`action_span`] for an action of a task whose root span is `task_root` (`None`: no root,
/// or the agent's span is the parent).
pub fn action_span_under(
    x: &Exchange,
    credential: Option<&Credential<'_>>,
    end: &End<'_>,
    task_root: Option<[u8; 8]>,
) -> SpanData {
    let decision = decision(x);
    let mut attributes = Vec::with_capacity(32);
    attributes.push(KeyValue::new("toolgate.agent.id", end.agent.to_string()));
    if !x.task_id.is_empty() {
        attributes.push(KeyValue::new("toolgate.task.id", x.task_id.clone()));
    }
    if let Some(tool) = &x.tool {
        attributes.push(KeyValue::new("toolgate.tool", tool.clone()));
    }
    attributes.push(KeyValue::new(
        "toolgate.action",
        cut(&x.action, MAX_NAME_BYTES).to_string(),
    ));
    attributes.push(KeyValue::new("toolgate.decision", decision));
    if !x.reason.is_empty() {
        attributes.push(KeyValue::new("toolgate.reason", x.reason.clone()));
    }
    if let Some(seq) = x.seq {
        attributes.push(KeyValue::new("toolgate.chain.seq", int(seq)));
    }
    attributes.push(KeyValue::new("toolgate.decision_id", x.decision_id.clone()));
    attributes.push(KeyValue::new(
        "toolgate.policy.revision",
        end.policy_revision.to_string(),
    ));
    if x.dry_run {
        attributes.push(KeyValue::new("toolgate.dry_run", true));
    }
    if let Some(via) = x.via {
        attributes.push(KeyValue::new("toolgate.via", via.as_str()));
    }
    if let Some(a) = &x.approval {
        attributes.push(KeyValue::new("toolgate.approval.id", a.id.clone()));
        attributes.push(KeyValue::new("toolgate.approval.status", a.status.as_str()));
        if let Some(by) = &a.decided_by {
            attributes.push(KeyValue::new("toolgate.approval.approver", by.clone()));
        }
    }
    if let Some(d) = &x.delegation {
        attributes.push(KeyValue::new("toolgate.delegation.depth", int(d.depth)));
        attributes.push(KeyValue::new(
            "toolgate.delegation.agents",
            Value::Array(Array::String(
                d.agents
                    .iter()
                    .map(|a| StringValue::from(a.clone()))
                    .collect(),
            )),
        ));
    }
    if let Some(d) = &x.delegated {
        attributes.push(KeyValue::new("toolgate.delegation.to", d.to.clone()));
        attributes.push(KeyValue::new(
            "toolgate.delegation.granted_depth",
            int(d.depth),
        ));
    }
    if let Some(e) = &x.ended {
        attributes.push(KeyValue::new("toolgate.task.ended_at", e.at.clone()));
        attributes.push(KeyValue::new("toolgate.task.ended_by", e.by.clone()));
    }
    if let Some(t) = &x.tunnel {
        attributes.push(KeyValue::new("toolgate.upgrade", t.protocol.clone()));
        if let Some(open) = t.duration() {
            attributes.push(KeyValue::new(
                "toolgate.tunnel.bytes_to_tool",
                int(t.to_tool),
            ));
            attributes.push(KeyValue::new(
                "toolgate.tunnel.bytes_from_tool",
                int(t.from_tool),
            ));
            attributes.push(KeyValue::new(
                "toolgate.tunnel.duration_ms",
                int(open.as_millis()),
            ));
        }
    }
    if let Some(c) = credential {
        attributes.push(KeyValue::new(
            "toolgate.credential.name",
            c.name.to_string(),
        ));
        attributes.push(KeyValue::new(
            "toolgate.credential.kind",
            c.kind.to_string(),
        ));
        if let Some(id) = c.id {
            attributes.push(KeyValue::new("toolgate.credential.id", id.to_string()));
        }
    }
    attributes.push(KeyValue::new("http.request.method", end.method.to_string()));
    if let Some(t) = &x.trace.target {
        attributes.push(KeyValue::new("url.scheme", t.scheme));
        attributes.push(KeyValue::new("server.address", t.host.clone()));
        attributes.push(KeyValue::new("server.port", i64::from(t.port)));
        attributes.push(KeyValue::new("url.path", t.path.clone()));
    }
    if end.status != 0 {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(end.status),
        ));
    }
    if end.status >= 400 {
        attributes.push(KeyValue::new("error.type", end.status.to_string()));
    } else if let Some(kind) = end.error {
        attributes.push(KeyValue::new("error.type", kind.to_string()));
    }
    genai_attributes(x, end.agent, &mut attributes);

    let status = match decision {
        "allow" if end.status >= 400 => Status::Error {
            description: Cow::Owned(
                x.failure
                    .clone()
                    .unwrap_or_else(|| format!("the tool answered {}", end.status)),
            ),
        },
        "allow" if end.error.is_some() => Status::Error {
            description: Cow::Owned(x.failure.clone().unwrap_or_default()),
        },
        "allow" => Status::Unset,
        _ if x.dry_run => Status::Error {
            description: Cow::Owned(format!("would deny (dry-run): {}", x.reason)),
        },
        _ => Status::Error {
            description: Cow::Owned(
                x.failure
                    .clone()
                    .or_else(|| (!x.reason.is_empty()).then(|| x.reason.clone()))
                    .unwrap_or_else(|| decision.to_string()),
            ),
        },
    };

    let mut events = SpanEvents::default();
    if let (Some(at), Some(took)) = (x.trace.evaluated_at, x.eval_time) {
        events.events.push(Event::new(
            "policy evaluated",
            x.trace.wall_clock(x.started, at),
            vec![
                KeyValue::new("toolgate.decision", decision),
                KeyValue::new("toolgate.policy.eval_duration_us", int(took.as_micros())),
            ],
            0,
        ));
    }
    if let Some(c) = credential.filter(|_| x.refused.is_none()) {
        let at = x
            .upstream_sent
            .or(x.trace.evaluated_at)
            .map(|at| x.trace.wall_clock(x.started, at))
            .unwrap_or(x.trace.started_at);
        let mut attrs = vec![
            KeyValue::new("toolgate.credential.name", c.name.to_string()),
            KeyValue::new("toolgate.credential.kind", c.kind.to_string()),
        ];
        if let Some(id) = c.id {
            attrs.push(KeyValue::new("toolgate.credential.id", id.to_string()));
        }
        events
            .events
            .push(Event::new("credential issued", at, attrs, 0));
    }

    let mut links = SpanLinks::default();
    if let (Some(previous), Some(seq)) = (x.trace.previous, x.seq) {
        links.links.push(Link::new(
            context(previous.trace_id, previous.span_id),
            vec![
                KeyValue::new("toolgate.link", "previous_action"),
                KeyValue::new("toolgate.chain.seq", int(seq.saturating_sub(1))),
            ],
            0,
        ));
    }

    let (parent_span_id, parent_span_is_remote) = match (x.trace.parent, task_root) {
        (Some(p), _) => (SpanId::from_bytes(p.parent_id), true),
        (None, Some(root)) => (SpanId::from_bytes(root), false),
        (None, None) => (SpanId::INVALID, false),
    };
    SpanData {
        span_context: context(x.trace.trace_id, x.span_id),
        parent_span_id,
        parent_span_is_remote,
        span_kind: SpanKind::Client,
        name: Cow::Owned(cut(&x.action, MAX_NAME_BYTES).to_string()),
        start_time: x.trace.started_at,
        end_time: end.ended.max(x.trace.started_at),
        attributes,
        dropped_attributes_count: 0,
        events,
        links,
        status,
        instrumentation_scope: SCOPE.clone(),
    }
}

/// The root span of a task (`task <id>`, kind INTERNAL), closed for `closed`: from its first
/// action's start to its last action's end, with the task's agent, the labels its actions
/// set, and how many actions it had per decision and per outcome.
pub fn task_span(root: &Root, closed: Closed) -> SpanData {
    let mut attributes = Vec::with_capacity(8 + DECISIONS.len() + OUTCOMES.len());
    attributes.push(KeyValue::new("toolgate.task.id", root.task.clone()));
    attributes.push(KeyValue::new("toolgate.agent.id", root.agent.to_string()));
    attributes.push(KeyValue::new("gen_ai.agent.id", root.agent.to_string()));
    attributes.push(KeyValue::new(
        "openinference.span.kind",
        OPENINFERENCE_AGENT,
    ));
    attributes.push(KeyValue::new("toolgate.task.actions", int(root.actions())));
    for (name, n) in DECISIONS.iter().zip(root.decisions) {
        if n > 0 {
            attributes.push(KeyValue::new(
                format!("toolgate.task.decisions.{name}"),
                int(n),
            ));
        }
    }
    for (name, n) in OUTCOMES.iter().zip(root.outcomes) {
        if n > 0 {
            attributes.push(KeyValue::new(
                format!("toolgate.task.outcomes.{name}"),
                int(n),
            ));
        }
    }
    if !root.labels.is_empty() {
        let labels: Vec<opentelemetry::StringValue> = root
            .labels
            .iter()
            .map(|l| opentelemetry::StringValue::from(l.to_string()))
            .collect();
        attributes.push(KeyValue::new(
            "toolgate.task.labels",
            opentelemetry::Value::Array(labels.into()),
        ));
    }
    if root.labels_dropped > 0 {
        attributes.push(KeyValue::new(
            "toolgate.task.labels_dropped",
            int(root.labels_dropped),
        ));
    }
    attributes.push(KeyValue::new("toolgate.task.closed", closed.as_str()));
    SpanData {
        span_context: context(root.trace_id, root.span_id),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Owned(format!("task {}", cut(&root.task, MAX_NAME_BYTES))),
        start_time: root.started,
        end_time: root.ended.max(root.started),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: SCOPE.clone(),
    }
}
