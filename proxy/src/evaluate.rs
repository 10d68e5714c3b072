//! Evaluate, on the data path: revocations first, then the task's end and its delegation
//! (an action outside it is refused: policy cannot widen a delegation), then policy over the
//! request, the task's history and labels and the agent's labels, its delegation
//! (`input.task.delegation`) — and `input.approval` when the request matched
//! an approved approval, which then satisfies a decision that asks for one; the action is then
//! appended to the task's chain as pending (with the labels it sets) and kept in the exchange
//! for the record stage, which settles it and writes its decision-log line when the exchange
//! ends. State is read before policy and written after it through the state store
//! (`crate::state`), whichever backend holds it. The shadow policy, when one is configured,
//! decides the same input beside it (`evaluate/shadow.rs`).

pub mod shadow;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName};
use serde_json::Value as Json;
use toolgate_policy::chain::{self, Outcome, TaskKey};
use toolgate_policy::classify::Tool;
use toolgate_policy::config::PolicyMode;
use toolgate_policy::evaluate::{Decision, Effect, Input, RequestView, Value};
use toolgate_policy::prepare::Prepared;
use toolgate_policy::shadow::Verdict;
use toolgate_policy::state::Approval;

use crate::approval::{Note, Pending};
use crate::credential;
use crate::gateway::{Gateway, Snapshot};
use crate::pipeline::Exchange;
use crate::problem::Refusal;
use crate::state::{Observed, Reserve, Unavailable};

/// One decided action of an exchange (one, or one per member of a JSON-RPC batch): what the
/// record stage writes for it once the exchange is over.
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision_id: String,
    pub action: Arc<str>,
    pub attributes: Vec<(Arc<str>, Json)>,
    pub effect: Effect,
    pub reason: String,
    /// A would-deny forwarded because policy runs in dry-run mode.
    pub dry_run: bool,
    /// Its entry in the task's chain.
    pub seq: u64,
    /// The labels it set on the task and the agent.
    pub labels: Vec<Arc<str>>,
    pub eval_time: Option<Duration>,
    /// The approval it asked for, or the approval it went out on.
    pub approval: Option<Note>,
    /// How it ended, when that was settled before the exchange ended (a held request that
    /// waited and was decided again).
    pub settled: Option<Outcome>,
    /// The shadow policy's decision, when it disagrees with this one (`policy.shadow`).
    pub shadow: Option<Box<shadow::Disagreement>>,
    /// The policy input and this decision's verdict, when the decision log records inputs
    /// (`telemetry.decision_log: { input: true }`).
    pub recorded: Option<Box<Recorded>>,
}

/// What a decision-log line needs to decide a request again (`toolgate replay`).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The input document exactly as policy saw it (it never holds a credential).
    pub input: Value,
    pub verdict: Verdict,
}

/// The task key of exchange `x`.
pub fn task_key(x: &Exchange) -> TaskKey<'_> {
    TaskKey {
        id: &x.task_id,
        verified: x.task_verified,
        began: x.task_began,
    }
}

/// Decide `prepared`; on return `x` holds the effect, reason, chain seq and dry-run flag, and
/// the decided action is appended to `x.decided`. `Ok` means forward (an allow, or a
/// would-deny in dry-run); `Err` carries the refusal — for a decision that asks a human,
/// [`Refusal::ApprovalRequired`] with no approval bound yet (`approval::hold` binds it).
pub async fn evaluate(
    gw: &Gateway,
    snapshot: &Snapshot,
    prepared: &Prepared,
    tool: Option<&Tool>,
    headers: &HeaderMap,
    hidden: &[HeaderName],
    x: &mut Exchange,
) -> Result<Decision, Refusal> {
    evaluate_approved(gw, snapshot, prepared, tool, headers, hidden, None, x).await
}

/// [`evaluate`] a request that matched the approved approval `approved` (`input.approval`),
/// which satisfies a decision that asks for approval.
#[allow(clippy::too_many_arguments)]
pub async fn evaluate_approved(
    gw: &Gateway,
    snapshot: &Snapshot,
    prepared: &Prepared,
    tool: Option<&Tool>,
    headers: &HeaderMap,
    hidden: &[HeaderName],
    approved: Option<&Approval>,
    x: &mut Exchange,
) -> Result<Decision, Refusal> {
    let config = &snapshot.config;
    let class = &prepared.classification;
    let agent = config.agent.id.as_str();
    let now = SystemTime::now();
    let tool_name = tool.map(|t| &*t.name);
    let span = chain::SpanRef {
        trace_id: x.trace.trace_id,
        span_id: x.span_id,
    };
    // A shared store appends the decision's entry, undecided, as it reads the chain.
    let reserve = Reserve {
        action: chain::Action {
            action: &class.action,
            tool: tool_name,
            agent,
            decision: "pending",
            dry_run: false,
            attributes: &class.attributes,
            labels: &[],
            at: now,
        },
        span,
    };
    // State that cannot be read refuses before policy: fail closed.
    let observed = gw
        .store
        .observe(&task_key(x), agent, now, Some(&reserve))
        .await;
    let reserved = observed.as_ref().ok().and_then(|o| o.reserved);
    if let Some(note) = observed.as_ref().ok().and_then(|o| o.note) {
        x.state_degraded = note.degraded;
    }
    let refused = before_policy(x, observed.as_ref(), &class.action);
    let mut eval_time = None;
    let mut shadowed = None;
    let mut replayable = None;
    let decision = match (&refused, &observed) {
        (Some(refusal), _) => Decision::deny(refusal.to_string()),
        (None, Err(unavailable)) => Decision::deny(unavailable.to_string()),
        (None, Ok(observed)) => {
            let accepted = &prepared.accepted;
            let params = credential::visible_params(config, tool, &accepted.request.params);
            let input = Input {
                agent_id: agent,
                agent_claims: config.agent.claims.as_ref(),
                task_id: &x.task_id,
                task_claims: x.task_claims.as_deref(),
                task_verified: x.task_verified,
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
                state: observed.view.clone(),
                now,
            };
            let mut input = input.to_value();
            crate::mcp::admit::input(gw, snapshot, prepared, tool, &mut input, x);
            if let Some(d) = &x.delegation {
                d.annotate(&mut input);
            }
            if let Some(a) = approved {
                a.granted().annotate(&mut input);
            }
            if let Some(note) = &observed.note {
                note.annotate(&mut input);
            }
            // Clones of the one input value (refcounted): the shadow and the log share it.
            let shadow_input = snapshot.shadow.as_ref().map(|_| input.clone());
            let record_input = (config.telemetry.decision_log_input && gw.decision_log.enabled())
                .then(|| input.clone());
            let started = Instant::now();
            let mut decision = snapshot.policy.decide(input);
            let finished = Instant::now();
            if approved.is_some() {
                decision = decision.satisfied_by_approval();
            }
            eval_time = Some(finished.duration_since(started));
            x.trace.evaluated_at = Some(finished);
            if let (Some(policy), Some(input)) = (&snapshot.shadow, shadow_input) {
                shadowed =
                    shadow::compare(snapshot, policy, tool, &decision, input, approved.is_some());
            }
            replayable = record_input.map(|input| {
                Box::new(Recorded {
                    input,
                    verdict: Verdict::of(config, tool, &decision),
                })
            });
            decision
        }
    };
    if let Some(detail) = &decision.error {
        tracing::warn!(decision_id = %x.decision_id, action = %x.action, error = %detail, "policy failed; request denied");
    }
    let dry_run =
        !decision.allowed() && refused.is_none() && config.policy.mode == PolicyMode::DryRun;
    let forwarded = decision.allowed() || dry_run;
    let catalog_labels = tool.map(|t| t.labels_of(&class.action)).unwrap_or_default();
    let labels = decision.labels_to_set(&catalog_labels, forwarded);
    let recorded = gw
        .store
        .record(
            &task_key(x),
            &chain::Action {
                action: &class.action,
                tool: tool_name,
                agent,
                decision: decision.effect.as_str(),
                dry_run,
                attributes: &class.attributes,
                labels: &labels,
                at: now,
            },
            span,
            reserved,
        )
        .await;
    // A chain that cannot be written refuses the request too (its decision is still logged):
    // a request must not go out unrecorded.
    let (recorded, unrecorded) = match recorded {
        Ok(r) => (r, None),
        Err(e) => (
            chain::Recorded {
                seq: 0,
                previous: None,
            },
            Some(e),
        ),
    };
    x.effect = Some(decision.effect);
    x.reason.clone_from(&decision.reason);
    x.dry_run = dry_run;
    x.seq = Some(recorded.seq);
    x.eval_time = eval_time;
    x.trace.previous = recorded.previous;
    x.decided.push(Decided {
        decision_id: x.decision_id.clone(),
        action: class.action.clone(),
        attributes: class.attributes.clone(),
        effect: decision.effect,
        reason: decision.reason.clone(),
        dry_run,
        seq: recorded.seq,
        labels,
        eval_time,
        approval: None,
        settled: None,
        shadow: shadowed,
        recorded: replayable,
    });
    if let Some(e) = unrecorded {
        return Err(Refusal::SharedState(e));
    }
    if let Some(Refusal::TaskEnded(ended)) = &refused {
        x.ended = Some(ended.clone());
    }
    match (decision.effect, refused) {
        (_, _) if dry_run => Ok(decision),
        (Effect::Allow, _) => {
            let mut decision = decision;
            if let Some(d) = &x.delegation {
                // A credential under a delegated task carries only the delegated scopes.
                d.narrow(&mut decision.credential.scopes);
            }
            Ok(decision)
        }
        (_, Some(refusal)) => Err(refusal),
        (effect, None) => refusal(effect, decision),
    }
}

/// What refuses a request before policy runs, in this order: state that cannot be read
/// (fail closed), a revoked task or agent, an ended task, an action outside the task's
/// delegation.
fn before_policy(
    x: &Exchange,
    observed: Result<&Observed, &Unavailable>,
    action: &str,
) -> Option<Refusal> {
    match observed {
        Err(unavailable) => return Some(Refusal::SharedState(unavailable.clone())),
        Ok(o) if o.revoked => return Some(Refusal::Revoked),
        Ok(o) => {
            if let Some(ended) = &o.ended {
                return Some(Refusal::TaskEnded(ended.clone()));
            }
        }
    }
    let delegation = x.delegation.as_ref()?;
    (!delegation.allows(action)).then(|| Refusal::DelegationScope {
        action: action.to_string(),
        delegated: delegation.actions.clone(),
    })
}

/// The refusal of a decision policy did not allow.
fn refusal(effect: Effect, decision: Decision) -> Result<Decision, Refusal> {
    match effect {
        Effect::Allow => Ok(decision),
        Effect::Error => Err(Refusal::PolicyError(decision.reason)),
        Effect::Deny => match decision.approval {
            Some(ask) => Err(Refusal::ApprovalRequired(Box::new(Pending {
                reason: decision.reason,
                ask,
                note: None,
            }))),
            None => Err(Refusal::Denied(decision.reason)),
        },
    }
}

/// Mark the last decided action of `x` as failed after policy allowed it (its credential is
/// not configured or could not be issued): logged as an error, like a policy failure.
pub fn failed_after_allow(x: &mut Exchange) {
    x.effect = Some(Effect::Error);
    if let Some(d) = x.decided.last_mut() {
        d.effect = Effect::Error;
    }
}
