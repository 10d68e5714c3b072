//! Record: the end of every exchange, in one place. Each decided action's chain entry settles
//! on exactly one outcome (the tool's status, or why there is none); each gets one
//! decision-log line; the exchange gets one span (exported over OTLP), one access-log line and
//! the metrics it counts toward. Stages before it only leave their results in the exchange,
//! so no path — refusal, batch, disconnect, upstream failure — can miss a record.

pub mod decision_log;
pub mod export;
pub mod metrics;
pub mod span;
pub mod trace;

use std::time::{Instant, SystemTime};

use pingora::proxy::Session;
use pingora::{ErrorSource, ErrorType};
use serde_json::Map;
use toolgate_policy::chain::Outcome;
use toolgate_policy::evaluate::Effect;

pub use decision_log::DecisionLog;
pub use export::Spans;
pub use metrics::Metrics;

use crate::gateway::Gateway;
use crate::pipeline::Exchange;

/// Settle every decided action of `x` on `outcome`, unless it has settled already: the first
/// true account stands (the tool's status as its answer arrives, or toolgate's refusal before
/// it is written), so the next request of the task sees it.
pub fn settle(gw: &Gateway, x: &mut Exchange, outcome: Outcome) {
    if x.outcome.is_some() {
        return;
    }
    x.outcome = Some(outcome);
    let task = crate::evaluate::task_key(x);
    for d in &x.decided {
        gw.ledger.settle(&task, d.seq, outcome);
    }
}

/// How an exchange that ended without a recorded outcome ended, from pingora's error.
fn ending(e: Option<&pingora::Error>, response_started: bool) -> Outcome {
    match e {
        Some(e) if e.esource() == &ErrorSource::Downstream => Outcome::AgentDisconnected,
        Some(e)
            if matches!(
                e.etype(),
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            ) =>
        {
            Outcome::Timeout
        }
        Some(_) => Outcome::UpstreamError,
        // No error and no response head from the tool: nothing reached the agent either.
        None if response_started => Outcome::UpstreamError,
        None => Outcome::AgentDisconnected,
    }
}

/// The credential exchange `x` issued (never its value): the one injected, or the delegation
/// token toolgate answered with.
fn credential(x: &Exchange) -> Option<decision_log::Credential<'_>> {
    match (&x.injection, &x.delegated) {
        (Some(i), _) => Some(decision_log::Credential {
            name: &i.name,
            kind: i.kind,
            id: i.id.as_deref(),
        }),
        (None, Some(d)) => Some(decision_log::Credential {
            name: "delegation",
            kind: "delegation",
            id: Some(&d.jti),
        }),
        (None, None) => None,
    }
}

/// Write one decision-log line per decided action of `x`, with the exchange's outcome and
/// credential.
pub fn decisions(gw: &Gateway, x: &Exchange) {
    if !gw.decision_log.enabled() || x.decided.is_empty() {
        // Nothing is written: build nothing.
        return;
    }
    let snapshot = x.snapshot.clone().unwrap_or_else(|| gw.snapshot());
    let outcome = x.outcome.unwrap_or(Outcome::AgentDisconnected);
    let span_id = hex::encode(x.span_id);
    let timestamp = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    // The credential went out only if the request did.
    let forwarded = matches!(
        outcome,
        Outcome::Response(_)
            | Outcome::AgentDisconnected
            | Outcome::UpstreamError
            | Outcome::Timeout
    );
    for d in &x.decided {
        // A held decision that waited and was decided again ended on its own.
        let outcome = d.settled.unwrap_or(outcome);
        let forwarded = forwarded && d.settled.is_none();
        let attributes: Map<String, serde_json::Value> = d
            .attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let credential = credential(x).filter(|_| forwarded && d.effect == Effect::Allow);
        gw.decision_log.write(&decision_log::Line {
            decision_id: &d.decision_id,
            timestamp: timestamp.clone(),
            agent: &snapshot.config.agent.id,
            task: &x.task_id,
            seq: d.seq,
            action: &d.action,
            tool: x.tool.as_deref(),
            attributes,
            result: decision_log::Result {
                allow: d.effect == Effect::Allow,
                effect: d.effect.as_str(),
                reason: &d.reason,
                dry_run: d.dry_run,
            },
            labels: &d.labels,
            outcome: decision_log::Outcome {
                outcome: outcome.as_str(),
                status: outcome.status(),
            },
            policy_revision: snapshot.policy.revision(),
            credential,
            approval: d.approval.as_ref().map(crate::approval::Note::log),
            delegation: x
                .delegation
                .as_ref()
                .map(|d| serde_json::json!({ "depth": d.depth, "agents": d.agents })),
            task_ended: x
                .ended
                .as_ref()
                .map(|e| serde_json::json!({ "at": e.at, "by": e.by })),
            trace_id: &x.trace_id,
            span_id: &span_id,
            eval_duration_us: d
                .eval_time
                .map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        });
    }
}

/// The end of exchange `x`: settle its actions (if nothing settled them yet), then its
/// decision-log lines, span, metrics and access-log line.
pub fn exchange(session: &Session, e: Option<&pingora::Error>, x: &mut Exchange, gw: &Gateway) {
    if x.outcome.is_none() {
        let outcome = ending(e, x.upstream_sent.is_some());
        settle(gw, x, outcome);
    }
    for t in x.decided.iter().filter_map(|d| d.eval_time) {
        gw.metrics.policy_eval.observe(t);
    }
    if let Some(s) = &x.scrubber {
        gw.metrics.scrubbed("masked", s.masked);
    }

    decisions(gw, x);
    let decision = span::decision(x);
    let status = x
        .refused
        .or_else(|| session.response_written().map(|r| r.status.as_u16()))
        .unwrap_or(0);
    let req = session.req_header();
    let credential = credential(x);
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
        spans.action(x, credential.as_ref(), &end, &snapshot.config.chain);
    }
    let metrics = &gw.metrics;
    metrics.request(&x.action, decision);
    let issued = match (&x.injection, &x.delegated) {
        (Some(i), _) => Some(i.kind),
        (None, Some(_)) => Some("delegation"),
        (None, None) => None,
    };
    if let Some(kind) = issued.filter(|_| x.refused.is_none()) {
        metrics.credential_issued(kind);
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
