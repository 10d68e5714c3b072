//! Evaluate, on the data path: revocations first, then policy over the request and the task's
//! history, then the decision is appended to the task's chain and written to the decision log.

use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName};
use serde_json::Map;
use toolgate_policy::chain;
use toolgate_policy::classify::Tool;
use toolgate_policy::config::PolicyMode;
use toolgate_policy::evaluate::{Decision, Effect, Input, RequestView};
use toolgate_policy::prepare::Prepared;

use crate::credential;
use crate::gateway::{Gateway, Snapshot};
use crate::pipeline::Exchange;
use crate::problem::Refusal;
use crate::record::decision_log::{self, Line};

/// Reason given for a revoked task or agent.
pub const REVOKED: &str = "revoked";

/// Decide `prepared`; on return `x` holds the effect, reason, chain seq and dry-run flag.
/// `Ok` means forward (an allow, or a would-deny in dry-run); `Err` carries the refusal.
pub fn evaluate(
    gw: &Gateway,
    snapshot: &Snapshot,
    prepared: &Prepared,
    tool: Option<&Tool>,
    headers: &HeaderMap,
    hidden: &[HeaderName],
    x: &mut Exchange,
) -> Result<Decision, Refusal> {
    let config = &snapshot.config;
    let class = &prepared.classification;
    let now = SystemTime::now();
    // Revocation state that cannot be read counts as revoked: fail closed.
    let state = gw.state.revoked(&x.task_id, &config.agent.id, now);
    let revoked = state != Ok(false);
    let decision = if let Err(unavailable) = state {
        Decision::deny(unavailable.to_string())
    } else if revoked {
        Decision::deny(REVOKED)
    } else {
        let accepted = &prepared.accepted;
        let params = credential::visible_params(config, tool, &accepted.request.params);
        let input = Input {
            agent_id: &config.agent.id,
            agent_claims: config.agent.claims.as_ref(),
            task_id: &x.task_id,
            task_claims: x.task_claims.as_deref(),
            action: &class.action,
            tool: tool.map(|t| &*t.name),
            attributes: &class.attributes,
            request: RequestView {
                method: accepted.request.method.as_str(),
                scheme: if accepted.tls { "https" } else { "http" },
                host: &accepted.host,
                port: accepted.port,
                path: &accepted.request.path,
                params: &params,
                headers,
                hidden,
                body: prepared.body.as_ref(),
            },
            chain: gw.ledger.history(&x.task_id),
            now,
        };
        let started = Instant::now();
        let decision = snapshot.policy.decide(input.to_value());
        let finished = Instant::now();
        x.eval_time = Some(finished.duration_since(started));
        x.trace.evaluated_at = Some(finished);
        decision
    };
    if let Some(detail) = &decision.error {
        tracing::warn!(decision_id = %x.decision_id, action = %x.action, error = %detail, "policy failed; request denied");
    }
    x.effect = Some(decision.effect);
    x.reason.clone_from(&decision.reason);
    x.dry_run = !decision.allowed() && !revoked && config.policy.mode == PolicyMode::DryRun;
    let recorded = gw.ledger.record_linked(
        &x.task_id,
        &chain::Action {
            action: &class.action,
            tool: tool.map(|t| &*t.name),
            decision: decision.effect.as_str(),
            dry_run: x.dry_run,
            attributes: &class.attributes,
            at: now,
        },
        chain::SpanRef {
            trace_id: x.trace.trace_id,
            span_id: x.span_id,
        },
    );
    x.seq = Some(recorded.seq);
    x.trace.previous = recorded.previous;
    match decision.effect {
        _ if x.dry_run => Ok(decision),
        Effect::Allow => Ok(decision),
        Effect::Deny if revoked => Err(state.map_or_else(Refusal::from, |_| Refusal::Revoked)),
        Effect::Error => Err(Refusal::PolicyError(decision.reason)),
        Effect::Deny if decision.approval_required => {
            Err(Refusal::ApprovalRequired(decision.reason))
        }
        Effect::Deny => Err(Refusal::Denied(decision.reason)),
    }
}

/// Write the decision-log line for the decision held in `x`.
pub fn log_decision(gw: &Gateway, snapshot: &Snapshot, prepared: &Prepared, x: &Exchange) {
    let Some(effect) = x.effect else { return };
    if !gw.decision_log.enabled() {
        // Nothing is written: build nothing.
        return;
    }
    let attributes: Map<String, serde_json::Value> = prepared
        .classification
        .attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let span_id = hex::encode(x.span_id);
    gw.decision_log.write(&Line {
        decision_id: &x.decision_id,
        timestamp: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        agent: &snapshot.config.agent.id,
        task: &x.task_id,
        seq: x.seq.unwrap_or(0),
        action: &x.action,
        tool: x.tool.as_deref(),
        attributes,
        result: decision_log::Result {
            allow: effect == Effect::Allow,
            effect: effect.as_str(),
            reason: &x.reason,
            dry_run: x.dry_run,
        },
        policy_revision: snapshot.policy.revision(),
        credential: x.injection.as_ref().map(|i| decision_log::Credential {
            name: &i.name,
            kind: i.kind,
            id: i.id.as_deref(),
        }),
        trace_id: &x.trace_id,
        span_id: &span_id,
        eval_duration_us: x
            .eval_time
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    });
}
