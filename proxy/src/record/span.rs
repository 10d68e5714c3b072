//! The span of one action (DESIGN.md §8): named after the action, kind CLIENT, with the
//! decision and its reason, the task's chain position, the credential's id (never its value),
//! the approval it was held for or went out on (`toolgate.approval.id`, `.status`,
//! `.approver`) and the HTTP semantic-convention attributes, typed (numbers as integers). It links to the
//! previous action's span in the same task, and is a child of the agent's span when the agent
//! sent `traceparent`. A shadow policy's disagreement is an event (`shadow disagreement`) and
//! `toolgate.shadow.decision`.

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::pipeline::Exchange;
use crate::record::decision_log::Credential;

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

/// The span for exchange `x`, which injected `credential` (if any).
pub fn action_span(x: &Exchange, credential: Option<&Credential<'_>>, end: &End<'_>) -> SpanData {
    let decision = decision(x);
    let mut attributes = Vec::with_capacity(24);
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
    let disagreements = x.decided.iter().filter_map(|d| d.shadow.as_deref());
    if let Some(last) = disagreements.clone().last() {
        attributes.push(KeyValue::new(
            "toolgate.shadow.decision",
            last.shadow.effect.as_str(),
        ));
        attributes.push(KeyValue::new(
            "toolgate.shadow.disagreements",
            int(disagreements.clone().count()),
        ));
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
    for (d, s) in x
        .decided
        .iter()
        .filter_map(|d| Some((d, d.shadow.as_deref()?)))
    {
        events.events.push(Event::new(
            "shadow disagreement",
            x.trace.wall_clock(x.started, s.at),
            vec![
                KeyValue::new(
                    "toolgate.action",
                    cut(&d.action, MAX_NAME_BYTES).to_string(),
                ),
                KeyValue::new("toolgate.decision", s.live.effect.as_str()),
                KeyValue::new("toolgate.shadow.decision", s.shadow.effect.as_str()),
                KeyValue::new("toolgate.shadow.reason", s.shadow.reason.clone()),
                KeyValue::new("toolgate.shadow.differs", s.differs.join(",")),
                KeyValue::new("toolgate.shadow.policy.revision", s.revision.to_string()),
                KeyValue::new(
                    "toolgate.shadow.eval_duration_us",
                    int(s.eval_time.as_micros()),
                ),
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

    let (parent_span_id, parent_span_is_remote) = match x.trace.parent {
        Some(p) => (SpanId::from_bytes(p.parent_id), true),
        None => (SpanId::INVALID, false),
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
