//! Record: one structured line per exchange, tied to its decision id and trace, and the
//! metrics it counts toward.

pub mod decision_log;
pub mod metrics;

use pingora::proxy::Session;

pub use decision_log::DecisionLog;
pub use metrics::Metrics;

use crate::pipeline::Exchange;

/// Log and count the outcome of one exchange.
pub fn exchange(session: &Session, e: Option<&pingora::Error>, x: &Exchange, metrics: &Metrics) {
    let decision = match (x.effect, x.refused) {
        (Some(effect), _) => effect.as_str(),
        (None, Some(_)) => "reject",
        (None, None) => "none",
    };
    metrics.request(&x.action, decision);
    if let Some(i) = &x.injection {
        if x.refused.is_none() {
            metrics.credential_issued(i.kind);
        }
    }
    let status = x
        .refused
        .or_else(|| session.response_written().map(|r| r.status.as_u16()))
        .unwrap_or(0);
    let req = session.req_header();
    tracing::info!(
        target: "toolgate::access",
        decision_id = %x.decision_id,
        trace_id = %x.trace_id,
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
