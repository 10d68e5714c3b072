//! The pipeline: pingora's `ProxyHttp` phases, each calling one stage in DESIGN.md §2 order
//! (accept → identify → normalise → classify → evaluate → credential → forward → record).
//! No policy logic lives in the phase bodies.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use toolgate_policy::accept::Via;
use toolgate_policy::classify::UNKNOWN;
use toolgate_policy::evaluate::Effect;
use toolgate_policy::normalise;
use toolgate_policy::prepare::{prepare, Refused};

use crate::credential::{self, Injection};
use crate::evaluate;
use crate::forward::{self, Plan};
use crate::gateway::{Gateway, Snapshot};
use crate::identify;
use crate::problem::{self, Ids, Refusal};
use crate::record;

/// Per-request state carried across phases.
#[derive(Debug)]
pub struct Exchange {
    pub snapshot: Option<Arc<Snapshot>>,
    pub started: Instant,
    pub decision_id: String,
    pub trace_id: String,
    /// The id of this action's span.
    pub span_id: [u8; 8],
    pub task_id: String,
    /// The verified task token's claims (`input.task.claims`).
    pub task_claims: Option<Arc<serde_json::Value>>,
    /// The action's sequence number in its task's chain, once recorded.
    pub seq: Option<u64>,
    pub via: Option<Via>,
    pub tool: Option<Arc<str>>,
    pub action: Arc<str>,
    pub effect: Option<Effect>,
    pub reason: String,
    /// A would-deny forwarded because policy runs in dry-run mode.
    pub dry_run: bool,
    pub plan: Option<Plan>,
    pub injection: Option<Injection>,
    strip: Vec<HeaderName>,
    /// Status of a response toolgate wrote itself (a refusal).
    pub refused: Option<u16>,
    /// Time spent evaluating policy.
    pub eval_time: Option<Duration>,
    /// When the request was handed to the upstream connection.
    pub upstream_sent: Option<Instant>,
    /// The problem detail toolgate answered with, when it refused.
    pub failure: Option<String>,
    forward_error: Option<forward::ForwardError>,
}

impl Exchange {
    fn new() -> Exchange {
        Exchange {
            snapshot: None,
            started: Instant::now(),
            decision_id: String::new(),
            trace_id: String::new(),
            span_id: rand::random(),
            task_id: String::new(),
            task_claims: None,
            seq: None,
            via: None,
            tool: None,
            action: Arc::from(UNKNOWN),
            effect: None,
            reason: String::new(),
            dry_run: false,
            plan: None,
            injection: None,
            strip: Vec::new(),
            refused: None,
            eval_time: None,
            upstream_sent: None,
            failure: None,
            forward_error: None,
        }
    }

    fn ids(&self) -> Ids<'_> {
        Ids {
            action: &self.action,
            decision_id: &self.decision_id,
            trace_id: &self.trace_id,
        }
    }

    /// Answer with `refusal`. The connection is kept only when no unread request body could
    /// be mistaken for the next request and the refusal is not a gateway error.
    async fn refuse(&mut self, gw: &Gateway, session: &mut Session, refusal: &Refusal) {
        let status = problem::problem(refusal).status;
        let headers = &session.req_header().headers;
        let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
            || headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body || status >= 500 {
            session.set_keepalive(None);
        }
        self.refused = Some(status);
        self.failure = Some(refusal.to_string());
        if let Some(seq) = self.seq {
            gw.ledger.complete(&self.task_id, seq, status);
        }
        if let Err(e) = problem::respond(session, refusal, self.ids()).await {
            tracing::debug!(error = %e, "could not write the refusal to the agent");
        }
    }
}

/// The toolgate proxy: one instance shared by every request.
#[derive(Debug)]
pub struct Pipeline {
    gateway: Arc<Gateway>,
}

impl Pipeline {
    /// A pipeline serving `gateway`'s current snapshot.
    pub fn new(gateway: Arc<Gateway>) -> Pipeline {
        Pipeline { gateway }
    }
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Refusal {
        match r {
            Refused::Rejected(e) => Refusal::Rejected(e),
            Refused::Ambiguous(e) => Refusal::Ambiguous(e),
        }
    }
}

/// identify → accept/normalise/classify → evaluate → credential → forward plan.
async fn admit(
    gw: &Gateway,
    snapshot: &Snapshot,
    req: &RequestHeader,
    x: &mut Exchange,
) -> Result<(), Refusal> {
    let config = &snapshot.config;
    let identity = identify::request(&req.headers, config, SystemTime::now())?;
    x.task_id = identity
        .task_id
        .unwrap_or_else(|| gw.default_task.current(config.chain.idle_ttl));
    x.trace_id = hex::encode(identity.trace_id);
    x.task_claims = identity.task_claims;

    let prepared = prepare(config, req.method.as_str(), req.raw_path(), &req.headers)?;
    let tool = prepared.accepted.tool.and_then(|t| config.catalog.tool(t));
    x.via = Some(prepared.accepted.via);
    x.tool = tool.map(|t| t.name.clone());
    x.action = prepared.classification.action.clone();

    let strip = credential::stripped_headers(config, tool);
    let outcome = evaluate::evaluate(gw, snapshot, &prepared, tool, &req.headers, &strip, x);
    let decision = match outcome {
        Ok(d) => d,
        Err(refusal) => {
            evaluate::log_decision(gw, snapshot, &prepared, x);
            return Err(refusal);
        }
    };
    if x.dry_run {
        // Forwarded as it came: the agent's credentials stay, nothing is injected.
        x.strip = Vec::new();
    } else {
        let subject = credential::subject(config, x);
        let issued = credential::issue(gw, snapshot, tool, &decision.credential, &subject).await;
        match issued {
            Ok(injection) => x.injection = injection,
            Err(e) => {
                // Allowed, but not forwardable: logged as an error, like a policy failure.
                x.effect = Some(Effect::Error);
                evaluate::log_decision(gw, snapshot, &prepared, x);
                return Err(e.into());
            }
        }
        x.strip = strip;
    }
    evaluate::log_decision(gw, snapshot, &prepared, x);
    x.plan = Some(forward::plan(&prepared.accepted, tool));
    Ok(())
}

/// Map a pingora failure while proxying to the refusal the agent sees.
fn upstream_refusal(e: &pingora::Error, forward_error: Option<forward::ForwardError>) -> Refusal {
    if let Some(f) = forward_error {
        return Refusal::Forward(f);
    }
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Refusal::UpstreamTimeout
        }
        _ => Refusal::UpstreamUnreachable(e.etype().as_str().to_string()),
    }
}

#[async_trait]
impl ProxyHttp for Pipeline {
    type CTX = Exchange;

    fn new_ctx(&self) -> Exchange {
        Exchange::new()
    }

    /// Runs once the request head is read. Decides the request; `Ok(true)` means toolgate
    /// answered with a problem and the tool receives nothing.
    async fn request_filter(&self, session: &mut Session, x: &mut Exchange) -> Result<bool> {
        let snapshot = self.gateway.snapshot();
        x.decision_id = uuid::Uuid::now_v7().to_string();
        let admitted = admit(&self.gateway, &snapshot, session.req_header(), x).await;
        x.snapshot = Some(snapshot);
        match admitted {
            Ok(()) => Ok(false),
            Err(refusal) => {
                x.refuse(&self.gateway, session, &refusal).await;
                Ok(true)
            }
        }
    }

    /// Runs after an allow: resolves the planned upstream. An error goes to `fail_to_proxy`.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        x: &mut Exchange,
    ) -> Result<Box<HttpPeer>> {
        let (Some(snapshot), Some(plan)) = (&x.snapshot, &x.plan) else {
            return Error::e_explain(
                ErrorType::InternalError,
                "no forward plan for an admitted request",
            );
        };
        match forward::peer(
            plan,
            &snapshot.config.limits,
            snapshot.upstream_roots.as_ref(),
        )
        .await
        {
            Ok(peer) => Ok(peer),
            Err(e) => {
                let message = e.to_string();
                x.forward_error = Some(e);
                Error::e_explain(ErrorType::ConnectNoRoute, message)
            }
        }
    }

    /// Runs before the request is sent: origin-form target, upstream Host, credentials.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        x: &mut Exchange,
    ) -> Result<()> {
        if let Some(plan) = &x.plan {
            forward::rewrite(req, plan)
                .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
        }
        credential::apply(req, &x.strip, x.injection.as_ref());
        x.upstream_sent = Some(Instant::now());
        Ok(())
    }

    /// Runs when the tool's response head arrives: its status joins the task's chain, and the
    /// injected credential is scrubbed from its headers before the agent sees them.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        x: &mut Exchange,
    ) -> Result<()> {
        credential::scrub(response, x.injection.as_ref());
        if let Some(sent) = x.upstream_sent {
            self.gateway
                .metrics
                .upstream_duration
                .observe(sent.elapsed());
        }
        if let Some(seq) = x.seq {
            self.gateway
                .ledger
                .complete(&x.task_id, seq, response.status.as_u16());
        }
        Ok(())
    }

    /// Runs when proxying failed: answers with a problem unless a response already started.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        x: &mut Exchange,
    ) -> FailToProxy {
        let downstream_gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
            );
        if downstream_gone || session.response_written().is_some() {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let refusal = match e.esource() {
            ErrorSource::Downstream => Refusal::Rejected(normalise::Rejection::BadTarget),
            _ => upstream_refusal(e, x.forward_error.take()),
        };
        x.refuse(&self.gateway, session, &refusal).await;
        FailToProxy {
            error_code: x.refused.unwrap_or(502),
            can_reuse_downstream: false,
        }
    }

    /// Runs when the exchange is over: one record per request.
    async fn logging(&self, session: &mut Session, e: Option<&pingora::Error>, x: &mut Exchange) {
        if let Some(t) = x.eval_time {
            self.gateway.metrics.policy_eval.observe(t);
        }
        record::exchange(session, e, x, &self.gateway.metrics);
    }

    fn suppress_error_log(&self, _session: &Session, _x: &Exchange, _e: &pingora::Error) -> bool {
        // Every failure is recorded by `logging` with its decision id.
        true
    }
}
