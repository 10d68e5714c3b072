//! Approval, on the data path: a decision that asks a human holds the request, bound to its
//! digest (`toolgate_policy::approval`); the identical request, once approved, is decided
//! again with `input.approval` and goes out once.
//!
//! For each request that is not a JSON-RPC batch:
//! 1. [`matching`] — before policy: an approved approval for this very request, if any. Its
//!    digest is computed only when some approved approval shares the request's head digest
//!    (almost never), and only then is a streamed body read to hash it.
//! 2. policy runs, with `input.approval` when one matched (`evaluate`).
//! 3. [`hold`] — when the decision asks for approval and none matched: the request's
//!    approval (new, still pending, denied or expired) answers the agent, or with `wait` the
//!    request stays open until a human decides.
//! 4. [`consume`] — after the credential is issued: the matched approval is used, atomically
//!    and durably, before the request goes out.
//!
//! Every change is counted (`toolgate_approvals_total{event}`), logged, sent to the webhook
//! (`webhook.rs`) and wakes held requests ([`Runtime`]).

pub mod page;
#[cfg(test)]
mod tests;
pub mod webhook;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::{json, Map, Value as Json};
use toolgate_policy::approval::{self, Ask, Binding, Digest, ShownBody};
use toolgate_policy::chain::Outcome;
use toolgate_policy::config::{body_cap, Config};
use toolgate_policy::prepare::Prepared;
use toolgate_policy::state::approvals::{self as store, ApprovalError, ApprovalStore};
use toolgate_policy::state::{Approval, Event, EventKind, NewApproval, Status};

use crate::gateway::{Gateway, Snapshot};
use crate::pipeline::Exchange;
use crate::problem::Refusal;

/// How often a held request looks at its approval even without a local change (a decision
/// made through another replica's store, an expiry).
const WAIT_POLL: Duration = Duration::from_secs(1);

/// The approval store decisions read and the operator API changes.
pub fn store(gw: &Gateway) -> &dyn ApprovalStore {
    &gw.state
}

/// What the process keeps for approvals besides the store: held requests' wake-ups, their
/// count, and the webhook sender.
#[derive(Debug)]
pub struct Runtime {
    changed: tokio::sync::watch::Sender<u64>,
    waiting: AtomicUsize,
    webhook: webhook::Sender,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            changed: tokio::sync::watch::Sender::new(0),
            waiting: AtomicUsize::new(0),
            webhook: webhook::Sender::default(),
        }
    }
}

impl Runtime {
    /// Requests held open right now (`wait`).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// An approval as the agent is told and the record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub id: String,
    pub status: Status,
    pub expires_at: String,
    pub approve_url: String,
    /// Who approved or denied it, and why.
    pub decided_by: Option<String>,
    pub comment: Option<String>,
}

impl Note {
    /// The note for `a`, whose page is `approvals.page_url`.
    pub fn of(a: &Approval, config: &Config) -> Note {
        Note {
            id: a.id.clone(),
            status: a.status,
            expires_at: a.expires_at.clone(),
            approve_url: config.approvals.approve_url(&a.id),
            decided_by: a.decided_by.clone(),
            comment: a.comment.clone(),
        }
    }

    /// The problem's (and the JSON-RPC error's `data`) extension members.
    pub fn members(&self) -> Map<String, Json> {
        let mut m = Map::new();
        m.insert("approval_id".into(), json!(self.id));
        m.insert("approval_status".into(), json!(self.status.as_str()));
        m.insert("expires_at".into(), json!(self.expires_at));
        m.insert("approve_url".into(), json!(self.approve_url));
        if let Some(by) = &self.decided_by {
            m.insert("decided_by".into(), json!(by));
        }
        if let Some(c) = &self.comment {
            m.insert("comment".into(), json!(c));
        }
        m
    }

    /// The decision log's `approval` object: `id`, `status`, `expires_at`, and who decided
    /// with their comment.
    pub fn log(&self) -> Json {
        json!({
            "id": self.id,
            "status": self.status.as_str(),
            "expires_at": self.expires_at,
            "decided_by": self.decided_by,
            "comment": self.comment,
        })
    }
}

/// A decision that asks for approval, before and after it is bound to an approval.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The decision's reason (the problem's `detail`).
    pub reason: String,
    pub ask: Ask,
    /// The approval it was bound to; `None` until [`hold`] binds it.
    pub note: Option<Note>,
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.note {
            Some(n) if n.status == Status::Denied => {
                write!(
                    f,
                    "{}: denied by {}",
                    self.reason,
                    n.decided_by.as_deref().unwrap_or("an operator")
                )?;
                match &n.comment {
                    Some(c) => write!(f, " ({c})"),
                    None => Ok(()),
                }
            }
            Some(n) if n.status == Status::Expired => write!(
                f,
                "{}: approval {} expired at {} before it was used; the identical request asks a human again once the expired approval is forgotten (approvals.retention)",
                self.reason, n.id, n.expires_at
            ),
            Some(n) if n.status == Status::Consumed => write!(
                f,
                "{}: approval {} was used a moment ago by an identical request; it goes out once",
                self.reason, n.id
            ),
            Some(n) => write!(
                f,
                "{}: waiting for a human to approve it at {} (approval {}, until {}); retry the identical request once approved",
                self.reason, n.approve_url, n.id, n.expires_at
            ),
            None => f.write_str(&self.reason),
        }
    }
}

/// The request's body and digests, computed at most once.
#[derive(Debug, Default)]
pub struct Bound {
    /// The body, when it was read (for classification, or here).
    body: Option<Bytes>,
    read: bool,
    head: Option<Digest>,
    digest: Option<Digest>,
    body_hash: Option<Digest>,
}

impl Bound {
    /// The request whose body classification read (`None`: not read).
    pub fn new(body: Option<Bytes>) -> Bound {
        Bound {
            read: body.is_some(),
            body,
            ..Bound::default()
        }
    }

    fn head(
        &mut self,
        config: &Config,
        prepared: &Prepared,
        headers: &http::HeaderMap,
        x: &Exchange,
    ) -> Digest {
        if let Some(h) = self.head {
            return h;
        }
        let accepted = &prepared.accepted;
        let target = accepted.request.target();
        let head = Binding {
            agent: &config.agent.id,
            task: &x.task_id,
            task_verified: x.task_verified,
            action: &prepared.classification.action,
            attributes: &prepared.classification.attributes,
            method: accepted.request.method.as_str(),
            scheme: if accepted.tls { "https" } else { "http" },
            host: &accepted.host,
            port: accepted.port,
            target: &target,
            headers,
        }
        .head();
        self.head = Some(head);
        head
    }

    /// The full digest, reading a streamed body first when it was not read.
    async fn digest(
        &mut self,
        session: &mut Session,
        config: &Config,
        prepared: &Prepared,
        x: &Exchange,
    ) -> Result<Digest, Refusal> {
        if let Some(d) = self.digest {
            return Ok(d);
        }
        let head = self.head(config, prepared, &session.req_header().headers, x);
        let body_hash = match (&prepared.rpc, &prepared.body) {
            // A JSON-RPC call is bound without its id (a client picks a new one per call).
            (Some(rpc), Some(message)) if !rpc.batch => approval::rpc_body_hash(message),
            _ => {
                self.read_body(session, config).await?;
                approval::body_hash(self.body.as_deref().unwrap_or_default())
            }
        };
        let digest = approval::digest(&head, &body_hash);
        self.body_hash = Some(body_hash);
        self.digest = Some(digest);
        Ok(digest)
    }

    async fn read_body(&mut self, session: &mut Session, config: &Config) -> Result<(), Refusal> {
        if self.read {
            return Ok(());
        }
        self.read = true;
        let headers = &session.req_header().headers;
        let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
            || headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if !has_body {
            return Ok(());
        }
        let limit = body_cap(&config.limits);
        let budget = config.limits.upstream_timeout;
        let body =
            match tokio::time::timeout(budget, crate::body::read_capped(session, limit)).await {
                Ok(read) => read?,
                Err(_) => return Err(Refusal::Body(crate::body::BodyError::Timeout(budget))),
            };
        if body.len() > limit {
            return Err(Refusal::ApprovalBody(limit));
        }
        self.body = Some(body);
        Ok(())
    }
}

/// Before policy: the approved approval this request matches, if any.
pub async fn matching(
    gw: &Gateway,
    snapshot: &Snapshot,
    session: &mut Session,
    prepared: &Prepared,
    bound: &mut Bound,
    x: &Exchange,
) -> Result<Option<Approval>, Refusal> {
    let store = store(gw);
    if !store.any_approved() {
        return Ok(None);
    }
    let config = &snapshot.config;
    let head = bound.head(config, prepared, &session.req_header().headers, x);
    if !store.approved_head(&head)? {
        return Ok(None);
    }
    let digest = bound.digest(session, config, prepared, x).await?;
    Ok(store.approved(&digest, SystemTime::now())?)
}

/// The request as a human deciding on it is shown it: no credential of the agent's, nor the
/// query parameter a secret is sent in.
fn shown(
    config: &Config,
    prepared: &Prepared,
    headers: &http::HeaderMap,
    bound: &Bound,
) -> approval::Shown {
    let accepted = &prepared.accepted;
    let tool = accepted.tool.and_then(|t| config.catalog.tool(t));
    let hidden = crate::credential::stripped_headers(config, tool);
    let (headers, headers_truncated) =
        approval::shown_headers(headers, &hidden, approval::MAX_SHOWN_HEADERS);
    let secret_param = tool
        .and_then(|t| t.credential.as_deref())
        .and_then(|n| config.credentials.get(n))
        .and_then(|c| match c {
            toolgate_policy::config::CredentialSpec::Secret(s) => match &s.placement {
                toolgate_policy::config::Placement::Query(q) => Some(q.as_str()),
                toolgate_policy::config::Placement::Header(_) => None,
            },
            _ => None,
        });
    let body = match (&prepared.rpc, &prepared.body, &bound.body) {
        (Some(_), Some(message), _) => {
            let text = serde_json::to_vec(message).unwrap_or_default();
            Some(ShownBody::of(&text, &approval::body_hash(&text)))
        }
        (_, _, Some(bytes)) if !bytes.is_empty() => Some(ShownBody::of(
            bytes,
            &bound
                .body_hash
                .unwrap_or_else(|| approval::body_hash(bytes)),
        )),
        _ => None,
    };
    approval::Shown {
        method: accepted.request.method.to_string(),
        scheme: if accepted.tls { "https" } else { "http" }.to_string(),
        host: accepted.host.clone(),
        port: accepted.port,
        path: accepted.request.path.clone(),
        query: approval::shown_query(accepted.request.query.as_deref(), secret_param),
        headers,
        headers_truncated,
        body,
    }
}

/// Attributes as kept for a human: each cut like the chain cuts them.
fn shown_attributes(prepared: &Prepared) -> Map<String, Json> {
    let mut out = Map::new();
    let mut used = 0usize;
    for (k, v) in &prepared.classification.attributes {
        let weight = toolgate_policy::chain::attribute_weight(k, v);
        let value = if used + weight > approval::MAX_SHOWN_ATTRIBUTES {
            json!({ "_truncated": true })
        } else {
            used += weight;
            v.clone()
        };
        out.insert(k.to_string(), value);
    }
    out
}

/// After a decision that asks for approval, with no approved approval matching: the
/// approval this request meets answers the agent (`Err`), or, with `wait`, the request is
/// held open until a human decides — `Ok` with the approval once approved, to be decided
/// again with it.
pub async fn hold(
    gw: &Gateway,
    snapshot: &Snapshot,
    session: &mut Session,
    prepared: &Prepared,
    bound: &mut Bound,
    mut pending: Pending,
    x: &mut Exchange,
) -> Result<Approval, Refusal> {
    let config = &snapshot.config;
    let settings = &config.approvals;
    let digest = bound.digest(session, config, prepared, x).await?;
    let head = bound.head(config, prepared, &session.req_header().headers, x);
    let tool = prepared.accepted.tool.and_then(|t| config.catalog.tool(t));
    let new = NewApproval {
        digest,
        head,
        agent: config.agent.id.clone(),
        task: x.task_id.clone(),
        task_verified: x.task_verified,
        action: prepared.classification.action.to_string(),
        tool: tool.map(|t| t.name.to_string()),
        attributes: shown_attributes(prepared),
        request: shown(config, prepared, &session.req_header().headers, bound),
        reason: pending
            .ask
            .reason
            .clone()
            .unwrap_or_else(|| pending.reason.clone()),
        approvers: pending.ask.approvers.clone(),
        decision_id: x.decision_id.clone(),
        trace_id: x.trace_id.clone(),
        ttl: settings.ttl(pending.ask.ttl),
    };
    let store = store(gw);
    let held = store.hold(new, settings.bounds(), SystemTime::now());
    flush(gw, snapshot);
    let held = match held {
        Ok(stored) => {
            if let Some(e) = stored.unsaved {
                tracing::error!(target: "toolgate::approvals", decision_id = %x.decision_id, "approval held in memory only: {e}");
            }
            stored.value.approval
        }
        Err(ApprovalError::Full(full)) => {
            gw.metrics.approval_refused();
            tracing::error!(target: "toolgate::approvals", decision_id = %x.decision_id, action = %x.action, "approval refused: {full}");
            return Err(Refusal::ApprovalsFull(full));
        }
        Err(ApprovalError::Unavailable(e)) => return Err(e.into()),
        Err(e @ (ApprovalError::NotFound(_) | ApprovalError::NotPending { .. })) => {
            // Holding never looks an approval up by id.
            tracing::error!(target: "toolgate::approvals", "unexpected: {e}");
            return Err(toolgate_policy::state::StateUnavailable.into());
        }
    };
    let note = Note::of(&held, config);
    if let Some(d) = x.decided.last_mut() {
        d.approval = Some(note.clone());
    }
    x.approval = Some(note.clone());
    pending.note = Some(note);
    let wait = pending.ask.wait.map(|w| w.min(settings.max_wait));
    match (held.status, wait) {
        (Status::Pending, Some(wait)) if gw.approvals.waiting() < settings.max_pending => {
            wait_for(gw, snapshot, held, wait, pending, x).await
        }
        (Status::Denied, _) => Err(Refusal::ApprovalDenied(Box::new(pending))),
        (Status::Expired, _) => Err(Refusal::ApprovalExpired(Box::new(pending))),
        _ => Err(Refusal::ApprovalRequired(Box::new(pending))),
    }
}

/// Counts a held request for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hold the request open until approval `held` is decided, it expires, or `wait` passes.
async fn wait_for(
    gw: &Gateway,
    snapshot: &Snapshot,
    held: Approval,
    wait: Duration,
    mut pending: Pending,
    x: &mut Exchange,
) -> Result<Approval, Refusal> {
    gw.approvals.waiting.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting(&gw.approvals.waiting);
    let config = &snapshot.config;
    let deadline = Instant::now() + wait;
    let mut changes = gw.approvals.changed.subscribe();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Refusal::ApprovalRequired(Box::new(pending)));
        }
        let step = (deadline - now).min(WAIT_POLL);
        // Woken by any change of any approval; then this one is looked at again.
        let _ = tokio::time::timeout(step, changes.changed()).await;
        let current = store(gw).get(&held.id, config.approvals.bounds(), SystemTime::now())?;
        flush(gw, snapshot);
        let Some(current) = current else {
            return Err(Refusal::ApprovalRequired(Box::new(pending)));
        };
        let note = Note::of(&current, config);
        match current.status {
            Status::Pending => continue,
            Status::Approved => {
                // The held decision ends here; the request is decided again, as a retry is.
                let held_seq = x.decided.last_mut().map(|d| {
                    d.approval = Some(note.clone());
                    d.settled = Some(Outcome::Refused(403));
                    d.seq
                });
                if let Some(seq) = held_seq {
                    gw.ledger
                        .settle(&crate::evaluate::task_key(x), seq, Outcome::Refused(403));
                }
                x.decision_id = uuid::Uuid::now_v7().to_string();
                return Ok(current);
            }
            Status::Denied => {
                pending.note = Some(note.clone());
                x.approval = Some(note);
                return Err(Refusal::ApprovalDenied(Box::new(pending)));
            }
            Status::Expired | Status::Consumed => {
                pending.note = Some(note.clone());
                x.approval = Some(note);
                return Err(Refusal::ApprovalExpired(Box::new(pending)));
            }
        }
    }
}

/// After the credential is issued: use the approval the request matched, atomically and
/// durably, before it goes out. Another identical request that used it a moment earlier
/// leaves this one refused (`approval-used`).
pub fn consume(gw: &Gateway, snapshot: &Snapshot, x: &mut Exchange) -> Result<(), Refusal> {
    let Some(matched) = x.matched.take() else {
        return Ok(());
    };
    let consumed = store(gw).consume(&matched.id, &x.decision_id, SystemTime::now())?;
    flush(gw, snapshot);
    if let Some(e) = consumed.unsaved {
        tracing::error!(target: "toolgate::approvals", approval = %matched.id, "approval used, in memory only: {e}");
    }
    let config = &snapshot.config;
    match consumed.value {
        Some(used) => {
            let note = Note::of(&used, config);
            if let Some(d) = x.decided.last_mut() {
                d.approval = Some(note.clone());
            }
            x.approval = Some(note);
            Ok(())
        }
        None => {
            let mut raced = matched;
            raced.status = Status::Consumed;
            let note = Note::of(&raced, config);
            x.approval = Some(note.clone());
            crate::evaluate::failed_after_allow(x);
            Err(Refusal::ApprovalUsed(Box::new(Pending {
                reason: x.reason.clone(),
                ask: Ask::default(),
                note: Some(note),
            })))
        }
    }
}

/// Hand the store's events to metrics, the log, the webhook and held requests.
pub fn flush(gw: &Gateway, snapshot: &Snapshot) {
    let events = store(gw).take_events();
    if events.is_empty() {
        return;
    }
    let config = &snapshot.config;
    for event in &events {
        gw.metrics.approval_event(event.kind.as_str());
        if let Some(took) = event.decision_time {
            gw.metrics.approval_decision.observe(took);
        }
        let a = &event.approval;
        tracing::info!(
            target: "toolgate::approvals",
            event = event.kind.as_str(),
            approval = %a.id,
            action = %a.action,
            task = %a.task,
            decided_by = a.decided_by.as_deref().unwrap_or("-"),
            expires_at = %a.expires_at,
            "approval {}",
            event.kind.as_str()
        );
        if let Some(hook) = &config.approvals.webhook {
            gw.approvals
                .webhook
                .send(hook, payload(event, config), &gw.metrics);
        }
    }
    gw.approvals.changed.send_modify(|n| *n = n.wrapping_add(1));
}

/// The webhook's JSON: a Slack-compatible `text`, and the approval's fields — never a
/// credential (the shown request has none).
pub fn payload(event: &Event, config: &Config) -> Json {
    let a = &event.approval;
    let url = config.approvals.approve_url(&a.id);
    let target = match &a.request.query {
        Some(q) => format!("{}?{q}", a.request.path),
        None => a.request.path.clone(),
    };
    let summary = format!(
        "{} {}://{}:{}{}",
        a.request.method, a.request.scheme, a.request.host, a.request.port, target
    );
    let who = a.decided_by.as_deref().unwrap_or("an operator");
    let text = match event.kind {
        EventKind::Requested => format!(
            "toolgate: approval requested for {} by {} in task {}: {}. {summary}. Approve or deny before {}: {url}",
            a.action, a.agent, a.task, a.reason, a.expires_at
        ),
        EventKind::Approved => format!("toolgate: {} in task {} approved by {who}", a.action, a.task),
        EventKind::Denied => format!(
            "toolgate: {} in task {} denied by {who}{}",
            a.action,
            a.task,
            a.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default()
        ),
        EventKind::Expired => format!("toolgate: approval for {} in task {} expired", a.action, a.task),
        EventKind::Consumed => format!("toolgate: approved {} in task {} went out", a.action, a.task),
    };
    json!({
        "text": text,
        "event": event.kind.as_str(),
        "id": a.id,
        "status": a.status.as_str(),
        "action": a.action,
        "tool": a.tool,
        "agent": a.agent,
        "task": a.task,
        "attributes": a.attributes,
        "request": {
            "method": a.request.method,
            "scheme": a.request.scheme,
            "host": a.request.host,
            "port": a.request.port,
            "target": target,
            "body_bytes": a.request.body.as_ref().map(|b| b.bytes),
            "body_sha256": a.request.body.as_ref().map(|b| b.sha256.clone()),
        },
        "reason": a.reason,
        "approvers": a.approvers,
        "requested_at": a.requested_at,
        "expires_at": a.expires_at,
        "decided_by": a.decided_by,
        "comment": a.comment,
        "approve_url": url,
    })
}

/// Re-exported for the operator API.
pub use store::valid_approval_id;
