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
use toolgate_policy::accept::{Destination, Via};
use toolgate_policy::chain::Outcome;
use toolgate_policy::classify::UNKNOWN;
use toolgate_policy::evaluate::{CredentialGrant, Effect};
use toolgate_policy::normalise;
use toolgate_policy::prepare::{self, Head, Prepared, Refused};

use crate::accept::{self, Inbound};
use crate::approval;
use crate::body;
use crate::credential::{self, Injection};
use crate::delegation;
use crate::evaluate;
use crate::forward::{self, Plan};
use crate::gateway::{Gateway, Snapshot};
use crate::identify;
use crate::mcp;
use crate::problem::{self, Ids, Refusal};
use crate::record;
use crate::upgrade;

/// Per-request state carried across phases.
#[derive(Debug)]
pub struct Exchange {
    pub snapshot: Option<Arc<Snapshot>>,
    pub started: Instant,
    pub decision_id: String,
    pub trace_id: String,
    /// The id of this action's span.
    pub span_id: [u8; 8],
    /// The action's place in its task's trace.
    pub trace: record::trace::Context,
    pub task_id: String,
    /// The verified task token's claims (`input.task.claims`).
    pub task_claims: Option<Arc<serde_json::Value>>,
    /// The task was named by a verified task token.
    pub task_verified: bool,
    /// When the task began, if its token says (`iat`).
    pub task_began: Option<SystemTime>,
    /// The task's delegation, when a delegation token names it (checked before policy).
    pub delegation: Option<Arc<toolgate_policy::delegation::Delegation>>,
    /// That delegation token, for the `parent` of a further delegation.
    pub delegation_token: Option<Arc<str>>,
    /// The task's end, when the request was refused because the task ended.
    pub ended: Option<Box<toolgate_policy::state::EndedTask>>,
    /// The delegation token toolgate answered a `task.delegate` action with.
    pub delegated: Option<crate::delegation::Delegated>,
    /// The action's sequence number in its task's chain, once recorded.
    pub seq: Option<u64>,
    /// Decided on this instance's own view because the shared state was unreachable
    /// (`state.on_unavailable: local`).
    pub state_degraded: bool,
    pub via: Option<Via>,
    pub tool: Option<Arc<str>>,
    pub action: Arc<str>,
    pub effect: Option<Effect>,
    pub reason: String,
    /// A would-deny forwarded because policy runs in dry-run mode.
    pub dry_run: bool,
    /// Every action decided in this exchange (one, or one per batch member), for the record
    /// stage.
    pub decided: Vec<evaluate::Decided>,
    /// How the exchange's actions ended, once known (set once, by `record::settle`).
    pub outcome: Option<Outcome>,
    pub plan: Option<Plan>,
    pub injection: Option<Injection>,
    /// The credential an allowing decision selected (name, grant), until it is issued.
    pub grant: Option<(String, CredentialGrant)>,
    /// A batch's members' selections (`None`: no credential), combined once all are decided.
    pub member_grants: Vec<(Option<String>, CredentialGrant)>,
    /// Headers removed before forwarding (the agent's credentials), once allowed.
    pub(crate) strip: Vec<HeaderName>,
    /// Status of a response toolgate wrote itself (a refusal).
    pub refused: Option<u16>,
    /// Time spent evaluating policy (the last decided action's).
    pub eval_time: Option<Duration>,
    /// When the request was handed to the upstream connection.
    pub upstream_sent: Option<Instant>,
    /// The problem detail toolgate answered with, when it refused.
    pub failure: Option<String>,
    forward_error: Option<forward::ForwardError>,
    /// The connection's fixed destination (tunnel, transparent redirect), if any.
    pub inbound: Option<Arc<Inbound>>,
    /// For an MCP POST: its JSON-RPC messages, answered in JSON-RPC when refused.
    pub rpc: Option<mcp::Reply>,
    /// Masks the injected credential in the response body, while it streams.
    pub scrubber: Option<credential::scrub::BodyScrubber>,
    /// Why toolgate stopped forwarding the tool's answer (answered by `fail_to_proxy`).
    pub aborted: Option<Refusal>,
    /// The protocol switch the action may make, and its tunnel once the tool switched.
    pub tunnel: Option<upgrade::Tunnel>,
    /// The approval the request was held for, or went out on (for its span).
    pub approval: Option<approval::Note>,
    /// The approved approval the request matched, until it is used (`approval::consume`).
    pub(crate) matched: Option<toolgate_policy::state::Approval>,
    /// For an allowed MCP `tools/list`: its answer's filter.
    pub listing: Option<mcp::listing::Listing>,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new()
    }
}

impl Exchange {
    /// A fresh exchange, as pingora's `new_ctx` makes one for each request.
    pub fn new() -> Exchange {
        let trace = record::trace::Context::default();
        Exchange {
            snapshot: None,
            started: Instant::now(),
            decision_id: String::new(),
            trace_id: hex::encode(trace.trace_id),
            span_id: rand::random(),
            trace,
            task_id: String::new(),
            task_claims: None,
            task_verified: false,
            task_began: None,
            delegation: None,
            delegation_token: None,
            ended: None,
            delegated: None,
            seq: None,
            state_degraded: false,
            via: None,
            tool: None,
            action: Arc::from(UNKNOWN),
            effect: None,
            reason: String::new(),
            dry_run: false,
            decided: Vec::new(),
            outcome: None,
            plan: None,
            injection: None,
            grant: None,
            member_grants: Vec::new(),
            strip: Vec::new(),
            refused: None,
            eval_time: None,
            upstream_sent: None,
            failure: None,
            forward_error: None,
            inbound: None,
            rpc: None,
            scrubber: None,
            aborted: None,
            tunnel: None,
            approval: None,
            matched: None,
            listing: None,
        }
    }

    pub(crate) fn ids(&self) -> Ids<'_> {
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
        self.failure = Some(refusal.to_string());
        // Settled before the agent can read the answer (and act on it): the chain records
        // the refusal's status, also when MCP gets it as HTTP 200.
        record::settle(gw, self, problem::outcome(refusal)).await;
        let answered = mcp::answers(self, refusal);
        self.refused = Some(if answered { 200 } else { status });
        let written = if answered {
            mcp::respond(session, self, refusal).await
        } else {
            problem::respond(session, refusal, self.ids()).await
        };
        if let Err(e) = written {
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
            Refused::BodyTooLarge { limit } => Refusal::BodyTooLarge(limit),
            Refused::HeaderMismatch(m) => Refusal::Mcp(m.into()),
        }
    }
}

/// identify → accept/normalise: who is asking, where to, and whether the body is needed.
async fn head(
    gw: &Gateway,
    snapshot: &Snapshot,
    session: &Session,
    destination: Option<&Destination>,
    x: &mut Exchange,
) -> Result<Head, Refusal> {
    let config = &snapshot.config;
    let req = session.req_header();
    let identity = identify::request(&req.headers, config, SystemTime::now())?;
    identify::enter(gw, config, identity, x).await;
    if let Some(h1) = session.as_downstream().as_http1() {
        normalise::raw_framing(&h1.get_headers_raw_bytes())?;
    }
    upgrade::check(&req.headers)?;
    let head = prepare::head(
        config,
        destination,
        req.method.as_str(),
        req.raw_path(),
        &req.headers,
    )?;
    x.via = Some(head.accepted.via);
    x.trace.target = Some(record::trace::Target::of(&head.accepted));
    x.tool = head
        .accepted
        .tool
        .and_then(|t| config.catalog.tool(t))
        .map(|t| t.name.clone());
    Ok(head)
}

/// classify (with the body, when it was read) → [approval: matching] → decide →
/// [approval: hold] → credential → [approval: consume] → forward plan.
async fn admit(
    gw: &Gateway,
    snapshot: &Snapshot,
    session: &mut Session,
    head: Head,
    body: Option<bytes::Bytes>,
    x: &mut Exchange,
) -> Result<(), Refusal> {
    let config = &snapshot.config;
    let prepared = prepare::finish(config, head, &session.req_header().headers, body.as_deref())?;
    let tool = prepared.accepted.tool.and_then(|t| config.catalog.tool(t));
    x.action = prepared.classification.action.clone();
    x.rpc = mcp::reply(&prepared);
    x.trace.mcp = record::trace::Mcp::of(prepared.rpc.as_ref(), &session.req_header().headers);
    mcp::admit::admit(gw, snapshot, &prepared, &session.req_header().headers, x).await?;
    let strip = credential::stripped_headers(config, tool);
    let batch = prepared.rpc.as_ref().is_some_and(|r| r.batch);
    if batch {
        let members = Members {
            gw,
            snapshot,
            headers: &session.req_header().headers,
            strip: &strip,
        };
        mcp::decide_batch(&prepared, x, &members, decide_member).await?;
    } else {
        let mut bound = approval::Bound::new(body);
        let mut matched =
            approval::matching(gw, snapshot, session, &prepared, &mut bound, x).await?;
        loop {
            let headers = &session.req_header().headers;
            let decided = decide(
                gw,
                snapshot,
                &prepared,
                headers,
                &strip,
                false,
                matched.as_ref(),
                x,
            )
            .await;
            match decided {
                Err(Refusal::ApprovalRequired(pending)) if pending.note.is_none() => {
                    // Held for a human; with `wait`, decided again once approved.
                    matched = Some(
                        approval::hold(gw, snapshot, session, &prepared, &mut bound, *pending, x)
                            .await?,
                    );
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        x.matched = matched;
    }
    issue(gw, snapshot, &prepared, tool, batch, x).await?;
    approval::consume(gw, snapshot, x).await?;
    x.plan = Some(forward::plan(&prepared.accepted, tool));
    x.tunnel = toolgate_policy::classify::requested_upgrade(&session.req_header().headers)
        .filter(|proto| tool.is_some_and(|t| t.may_upgrade(&x.action, proto)))
        .map(upgrade::Tunnel::new);
    Ok(())
}

/// What deciding each member of a batch needs.
struct Members<'s> {
    gw: &'s Gateway,
    snapshot: &'s Snapshot,
    headers: &'s http::HeaderMap,
    strip: &'s [HeaderName],
}

/// [`decide`] one member of a batch.
fn decide_member<'a>(
    m: &'a Members<'_>,
    prepared: &'a Prepared,
    x: &'a mut Exchange,
) -> mcp::Deciding<'a> {
    Box::pin(decide(
        m.gw, m.snapshot, prepared, m.headers, m.strip, true, None, x,
    ))
}

/// evaluate, and select the credential, for one action. In a batch the selection is kept per
/// member (`member_grants`), to be combined once every member is decided, and a member that
/// needs approval refuses the batch (an approval binds one request). `approved`: the approved
/// approval the request matched.
#[allow(clippy::too_many_arguments)]
async fn decide(
    gw: &Gateway,
    snapshot: &Snapshot,
    prepared: &Prepared,
    headers: &http::HeaderMap,
    strip: &[HeaderName],
    batch: bool,
    approved: Option<&toolgate_policy::state::Approval>,
    x: &mut Exchange,
) -> Result<(), Refusal> {
    let config = &snapshot.config;
    let tool = prepared.accepted.tool.and_then(|t| config.catalog.tool(t));
    let decision = match evaluate::evaluate_approved(
        gw, snapshot, prepared, tool, headers, strip, approved, x,
    )
    .await
    {
        Err(Refusal::ApprovalRequired(pending)) if batch => {
            return Err(Refusal::ApprovalInBatch(pending.reason))
        }
        other => other?,
    };
    if x.dry_run {
        // Forwarded as it came: the agent's credentials stay, nothing is injected.
        x.strip = Vec::new();
        return Ok(());
    }
    let selected = match credential::select(config, tool, &decision.credential) {
        Ok(selected) => selected.map(|s| s.name.to_string()),
        Err(e) => {
            evaluate::failed_after_allow(x);
            return Err(e.into());
        }
    };
    x.strip = strip.to_vec();
    if batch {
        x.member_grants.push((selected, decision.credential));
    } else {
        x.grant = selected.map(|name| (name, decision.credential));
    }
    Ok(())
}

/// credential: issue the credential the decision selected (mint, exchange, or a secret). A
/// batch carries one credential, scoped to every member's action.
async fn issue(
    gw: &Gateway,
    snapshot: &Snapshot,
    prepared: &Prepared,
    tool: Option<&toolgate_policy::classify::Tool>,
    batch: bool,
    x: &mut Exchange,
) -> Result<(), Refusal> {
    let Some((_, grant)) = x.grant.take() else {
        return Ok(());
    };
    let actions = credential::actions(prepared);
    let mut subject = credential::subject(&snapshot.config, x);
    if batch {
        subject.action = &actions;
    }
    // A request that goes out on a human's approval says which (`approval` claim).
    subject.approval = x.matched.as_ref().map(|a| a.id.as_str());
    match credential::issue(gw, snapshot, tool, &grant, &subject).await {
        Ok(injection) => {
            x.injection = injection;
            Ok(())
        }
        Err(e) => {
            // Allowed, but not forwardable: logged as an error, like a policy failure.
            for d in &mut x.decided {
                d.effect = Effect::Error;
            }
            x.effect = Some(Effect::Error);
            Err(e.into())
        }
    }
}

/// Stop forwarding the tool's answer: `fail_to_proxy` answers the agent with `refusal`.
fn abort(x: &mut Exchange, refusal: Refusal) -> Result<()> {
    let message = refusal.to_string();
    x.aborted = Some(refusal);
    Error::e_explain(ErrorType::InternalError, message)
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

    /// Runs once the request head is read. Reads the body if classification needs it, then
    /// decides the request; `Ok(true)` means toolgate answered itself (a problem, a JSON-RPC
    /// error for MCP, or a delegation token) and the tool receives nothing.
    async fn request_filter(&self, session: &mut Session, x: &mut Exchange) -> Result<bool> {
        let snapshot = self.gateway.snapshot();
        x.decision_id = uuid::Uuid::now_v7().to_string();
        let gw = &self.gateway;
        let timeout = snapshot.config.limits.connect_timeout;
        let admitted = async {
            let inbound = x.inbound.clone();
            let destination =
                accept::destination(inbound.as_deref(), session.req_header(), timeout).await?;
            let head = head(gw, &snapshot, session, destination.as_ref(), x).await?;
            if delegation::requested(&head) {
                // toolgate's own endpoint: decided, then answered by toolgate.
                return delegation::serve(gw, &snapshot, session, head, x).await;
            }
            let body = body::read(session, &head, &snapshot.config.limits).await?;
            admit(gw, &snapshot, session, head, body, x).await
        }
        .await;
        x.snapshot = Some(snapshot);
        match admitted {
            Ok(()) if x.delegated.is_some() => Ok(true),
            Ok(()) => {
                if x.tunnel.is_none() && upgrade::asks(&session.req_header().headers) {
                    // Not the action's to switch: forwarded as a plain request.
                    upgrade::strip(session.req_header_mut());
                }
                Ok(false)
            }
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
        mcp::listing::ask_identity(req, x);
        record::trace::propagate(req, x, self.gateway.spans.is_some());
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
        if response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            match x.tunnel.as_mut() {
                Some(tunnel) => tunnel.opened = Some(Instant::now()),
                None => return abort(x, Refusal::UnexpectedUpgrade),
            }
        }
        let scrubbed = credential::scrub(response, x.injection.as_ref());
        self.gateway.metrics.cookies_dropped(scrubbed.cookies);
        if scrubbed.compressed {
            // Asked for identity and answered compressed anyway: the body cannot be checked
            // for the credential, so it is withheld.
            self.gateway.metrics.scrubbed("compressed_body", 1);
            return abort(x, Refusal::CompressedAnswer);
        }
        x.scrubber = credential::body_scrubber(x.injection.as_ref());
        if let Err(refusal) = mcp::listing::head(response, x) {
            return abort(x, refusal);
        }
        if let Some(sent) = x.upstream_sent {
            self.gateway
                .metrics
                .upstream_duration
                .observe(sent.elapsed());
        }
        // The tool has answered: settled now, before the agent can read the answer and act.
        record::settle(
            &self.gateway,
            x,
            Outcome::Response(response.status.as_u16()),
        )
        .await;
        Ok(())
    }

    /// Runs for each chunk of the request body on its way to the tool (after a protocol
    /// switch: the tunnel's bytes, counted for its span).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        x: &mut Exchange,
    ) -> Result<()> {
        if let (Some(tunnel), Some(chunk)) = (x.tunnel.as_mut(), body.as_ref()) {
            if tunnel.opened.is_some() {
                tunnel.to_tool += chunk.len() as u64;
            }
        }
        Ok(())
    }

    /// Runs for each chunk of the response body on its way to the agent: an MCP tool list is
    /// filtered by policy, then the injected credential is masked (or the whole body
    /// replaced, when it could not be checked).
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        x: &mut Exchange,
    ) -> Result<Option<Duration>> {
        if let (Some(tunnel), Some(chunk)) = (x.tunnel.as_mut(), body.as_ref()) {
            if tunnel.opened.is_some() {
                tunnel.from_tool += chunk.len() as u64;
            }
        }
        mcp::listing::body(&self.gateway, body, end_of_stream, x);
        if let Some(scrubber) = x.scrubber.as_mut() {
            let mut out = match body.take() {
                Some(chunk) => scrubber.chunk(&chunk),
                None => bytes::Bytes::new(),
            };
            if end_of_stream {
                let rest = scrubber.finish();
                if !rest.is_empty() {
                    out = [out, rest].concat().into();
                }
            }
            // An empty chunk would end a chunked body early: pass nothing instead.
            *body = (!out.is_empty()).then_some(out);
        }
        Ok(None)
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
        let refusal = match (x.aborted.take(), e.esource()) {
            (Some(aborted), _) => aborted,
            (None, ErrorSource::Downstream) => Refusal::Rejected(normalise::Rejection::BadTarget),
            (None, _) => upstream_refusal(e, x.forward_error.take()),
        };
        x.refuse(&self.gateway, session, &refusal).await;
        FailToProxy {
            error_code: x.refused.unwrap_or(502),
            can_reuse_downstream: false,
        }
    }

    /// Runs when the exchange is over: one record per request.
    async fn logging(&self, session: &mut Session, e: Option<&pingora::Error>, x: &mut Exchange) {
        record::exchange(session, e, x, &self.gateway).await;
    }

    /// Runs before a request on a connection with a fixed destination (the first request
    /// too): the tunnel's or redirect's destination becomes the request's.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        x: &mut Exchange,
        previous: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(inbound) = previous.downcast::<Inbound>() {
            x.inbound = Some(Arc::new(*inbound));
        }
    }

    /// Runs when a kept-alive connection is reused: its destination carries over.
    fn persist_connection_context(
        &self,
        _session: &Session,
        x: &Exchange,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        x.inbound.as_deref().map(|i| Box::new(i.clone()) as Box<_>)
    }

    fn suppress_error_log(&self, _session: &Session, _x: &Exchange, _e: &pingora::Error) -> bool {
        // Every failure is recorded by `logging` with its decision id.
        true
    }
}
