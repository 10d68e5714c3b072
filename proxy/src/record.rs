//! Record: one span per action (exported over OTLP), one structured line per exchange tied to
//! its decision id and trace, and the metrics it counts toward.

pub mod decision_log;
pub mod export;
pub mod metrics;
pub mod span;
pub mod trace;

use std::time::Instant;

use pingora::proxy::Session;

pub use decision_log::DecisionLog;
pub use export::Spans;
pub use metrics::Metrics;

use crate::gateway::Gateway;
use crate::pipeline::Exchange;

/// Export the span, count and log the outcome of one exchange.
pub fn exchange(session: &Session, e: Option<&pingora::Error>, x: &Exchange, gw: &Gateway) {
    let decision = span::decision(x);
    let status = x
        .refused
        .or_else(|| session.response_written().map(|r| r.status.as_u16()))
        .unwrap_or(0);
    let req = session.req_header();
    let credential = x.injection.as_ref().map(|i| decision_log::Credential {
        name: &i.name,
        kind: i.kind,
        id: i.id.as_deref(),
    });
    // The span goes first: once the request is counted, its span is queued (the demo and
    // tests wait on the counter).
    // No decision id: the request never reached the pipeline, so there is no action.
    if let Some(spans) = gw.spans.as_ref().filter(|_| !x.decision_id.is_empty()) {
        let snapshot = x.snapshot.clone().unwrap_or_else(|| gw.snapshot());
        let end = span::End {
            // From the monotonic clock, like the events: a wall-clock step cannot reorder them.
            ended: x.trace.wall_clock(x.started, Instant::now()),
            status,
            method: req.method.as_str(),
            agent: &snapshot.config.agent.id,
            policy_revision: snapshot.policy.revision(),
            error: e.map(|e| e.etype().as_str()),
        };
        spans.submit(span::action_span(x, credential.as_ref(), &end));
    }
    let metrics = &gw.metrics;
    metrics.request(&x.action, decision);
    if let Some(i) = &x.injection {
        if x.refused.is_none() {
            metrics.credential_issued(i.kind);
        }
    }
    tracing::info!(
        target: "toolgate::access",
        decision_id = %x.decision_id,
        trace_id = %x.trace_id,
        span_id = %hex::encode(x.span_id),
        task = %x.task_id,
        via = x.via.map(|v| v.as_str()).unwrap_or("-"),
        tool = x.tool.as_deref().unwrap_or("-"),
        action = %x.action,
        decision = x.effect.map(|d| d.as_str()).unwrap_or("-"),
        reason = %x.reason,
        failure = x.failure.as_deref().unwrap_or("-"),
        credential = x.injection.as_ref().map(|i| i.name.as_str()).unwrap_or("-"),
        method = %req.method,
        status,
        error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
        duration_us = x.started.elapsed().as_micros() as u64,
        "exchange"
    );
}
