//! Problem responses (RFC 9457 `application/problem+json`): the one place where every way a
//! request can be refused becomes a status, a type and a reason the agent can act on.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::Serialize;
use toolgate_policy::classify::ClassifyError;
use toolgate_policy::delegation::GrantError;
use toolgate_policy::normalise::Rejection;
use toolgate_policy::state::StateUnavailable;

use crate::approval::Pending;
use crate::body::BodyError;
use crate::credential::{CredentialError, Unavailable, UnknownCredential};
use crate::forward::ForwardError;
use crate::identify::{AgentExpired, BadTask, IdentifyError, TaskRequired, TaskTokenError};

/// Every reason toolgate answers a request itself instead of the tool.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Denied(String),
    /// The decision asks a human: the request is held (its approval pending), not forwarded.
    #[error("{0}")]
    ApprovalRequired(Box<Pending>),
    /// A human denied the identical request.
    #[error("{0}")]
    ApprovalDenied(Box<Pending>),
    /// The identical request's approval expired before it was used.
    #[error("{0}")]
    ApprovalExpired(Box<Pending>),
    /// An identical request used the approval a moment earlier: it goes out once.
    #[error("{0}")]
    ApprovalUsed(Box<Pending>),
    /// `approvals.max_pending` approvals are in force: no new one is held.
    #[error(transparent)]
    ApprovalsFull(#[from] toolgate_policy::state::approvals::Full),
    /// A batch member needs approval: approvals bind one request.
    #[error("{0}: an action that needs human approval must be sent on its own, not in a JSON-RPC batch (an approval binds one request)")]
    ApprovalInBatch(String),
    /// The body of a request that needs approval is larger than toolgate reads to bind it.
    #[error("this request needs human approval, which binds its body, and its body is larger than {0} bytes, the most toolgate reads (limits.max_body_bytes, at most 65536)")]
    ApprovalBody(usize),
    #[error("{0}")]
    PolicyError(String),
    #[error("revoked")]
    Revoked,
    /// The task ended (an operator or the orchestrator ended it): refused before policy.
    #[error("task {} ended at {} (by {}): nothing more is done under it", .0.id, .0.at, .0.by)]
    TaskEnded(Box<toolgate_policy::state::EndedTask>),
    /// The action is outside what the task's delegation hands this agent: refused before
    /// policy, which cannot widen a delegation.
    #[error("action {action} is outside this task's delegation, which allows only {}", .delegated.join(", "))]
    DelegationScope {
        action: String,
        delegated: Vec<String>,
    },
    /// A delegation request that cannot be read.
    #[error(transparent)]
    DelegationRequest(#[from] toolgate_policy::delegation::RequestError),
    /// A delegation that cannot be granted whatever policy says.
    #[error(transparent)]
    DelegationGrant(#[from] toolgate_policy::delegation::GrantError),
    /// Delegation requests with no `delegation` configured.
    #[error("this toolgate does not delegate: set `delegation.key_file` (and `delegation.issuer`) in its configuration")]
    DelegationOff,
    /// The revocation state cannot be read: refused rather than decided without it.
    #[error(transparent)]
    StateUnavailable(#[from] StateUnavailable),
    /// The state backend (Redis) cannot be reached, and `state.on_unavailable` is `deny`.
    #[error(transparent)]
    SharedState(#[from] crate::state::Unavailable),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Ambiguous(#[from] ClassifyError),
    #[error(transparent)]
    BadTask(#[from] BadTask),
    #[error(transparent)]
    UnknownCredential(#[from] UnknownCredential),
    #[error(transparent)]
    TaskToken(#[from] TaskTokenError),
    #[error(transparent)]
    AgentExpired(#[from] AgentExpired),
    #[error(transparent)]
    TaskRequired(#[from] TaskRequired),
    /// The members of a batch were granted different credentials; one request carries one.
    #[error("{0}")]
    MixedBatch(String),
    #[error(transparent)]
    CredentialUnavailable(#[from] Unavailable),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("the tool did not answer in time")]
    UpstreamTimeout,
    #[error("the tool could not be reached: {0}")]
    UpstreamUnreachable(String),
    #[error("no tool in the catalog serves {0}: toolgate opens tunnels only to catalogued hosts")]
    NotCatalogued(String),
    #[error("bad CONNECT request: {0}")]
    BadConnect(String),
    #[error("{0}")]
    InterceptionUnavailable(String),
    #[error("{0}")]
    Misdirected(String),
    #[error("the body is larger than {0} bytes, the most toolgate reads to classify a request (limits.max_body_bytes, at most 65536)")]
    BodyTooLarge(usize),
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The tool answered a credentialed request with a compressed body despite
    /// `Accept-Encoding: identity`: it cannot be checked for the credential.
    #[error("the tool answered with a compressed body although toolgate asked for identity; a body that cannot be checked for the injected credential is withheld")]
    CompressedAnswer,
    #[error(transparent)]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    /// The tool switched protocols (101) for a request that was not allowed to.
    #[error("the tool switched protocols (101) for a request whose action may not upgrade the connection; the connection is closed")]
    UnexpectedUpgrade,
    /// MCP: routing headers that disagree with the body, a task conflict, an unfilterable
    /// `tools/list` answer.
    #[error(transparent)]
    Mcp(#[from] crate::mcp::McpRefusal),
    #[error(
        "the request head (request line and headers) is over {0} bytes (limits.max_head_bytes)"
    )]
    HeadTooLarge(usize),
    #[error("the request head was not complete {} after its first byte (limits.head_timeout)", humantime::format_duration(*.0))]
    HeadTimeout(std::time::Duration),
    /// A listener or the buffer budget is full: the agent should retry shortly.
    #[error("{0}; retry shortly")]
    Overloaded(String),
}

impl From<IdentifyError> for Refusal {
    fn from(e: IdentifyError) -> Refusal {
        match e {
            IdentifyError::BadTask(e) => Refusal::BadTask(e),
            IdentifyError::TaskToken(e) => Refusal::TaskToken(e),
            IdentifyError::AgentExpired(e) => Refusal::AgentExpired(e),
            IdentifyError::TaskRequired(e) => Refusal::TaskRequired(e),
        }
    }
}

impl From<CredentialError> for Refusal {
    fn from(e: CredentialError) -> Refusal {
        match e {
            CredentialError::Unknown(e) => Refusal::UnknownCredential(e),
            CredentialError::Unavailable(e) => Refusal::CredentialUnavailable(e),
        }
    }
}

/// The parts of a problem document that depend on the refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    /// Last part of the `type` URI.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
}

/// Base of problem `type` URIs.
pub const TYPE_BASE: &str = "urn:toolgate:problem:";

/// Map a refusal to its problem. Exhaustive on purpose: a new refusal needs a status.
pub fn problem(refusal: &Refusal) -> Problem {
    let detail = refusal.to_string();
    let (status, kind, title) = match refusal {
        Refusal::Denied(_) => (403, "denied", "action denied"),
        Refusal::ApprovalRequired(_) => (403, "approval-required", "approval required"),
        Refusal::ApprovalDenied(_) => (403, "approval-denied", "approval denied"),
        Refusal::ApprovalExpired(_) => (403, "approval-expired", "approval expired"),
        Refusal::ApprovalUsed(_) => (409, "approval-used", "approval already used"),
        Refusal::ApprovalsFull(_) => (503, "approvals-full", "approvals full"),
        Refusal::ApprovalInBatch(_) => (403, "approval-batch", "approval needs a single request"),
        Refusal::ApprovalBody(_) => (413, "body-too-large", "request body too large"),
        Refusal::PolicyError(_) => (403, "policy-error", "policy error"),
        Refusal::Revoked => (403, "revoked", "revoked"),
        Refusal::TaskEnded(_) => (403, "task-ended", "task ended"),
        Refusal::DelegationScope { .. } => (403, "delegation-scope", "outside the delegation"),
        Refusal::DelegationRequest(_) => (400, "delegation-request", "bad delegation request"),
        Refusal::DelegationGrant(GrantError::ToSelf) => {
            (400, "delegation-request", "bad delegation request")
        }
        Refusal::DelegationGrant(
            GrantError::NothingHeld(_) | GrantError::TooDeep(_) | GrantError::TooLong(_),
        ) => (403, "delegation-scope", "outside the delegation"),
        Refusal::DelegationOff => (403, "delegation-off", "delegation not configured"),
        Refusal::StateUnavailable(_) | Refusal::SharedState(_) => {
            (503, "state-unavailable", "state unavailable")
        }
        Refusal::UnknownCredential(_) => (403, "policy-error", "policy error"),
        Refusal::TaskToken(_) => (403, "task-token", "task token rejected"),
        Refusal::AgentExpired(_) => (403, "agent-identity", "agent identity expired"),
        Refusal::TaskRequired(_) => (403, "task-required", "task token required"),
        Refusal::MixedBatch(_) => (403, "batch-credentials", "batch refused"),
        Refusal::CredentialUnavailable(_) => {
            (503, "credential-unavailable", "credential unavailable")
        }
        Refusal::Rejected(_) => (400, "rejected", "request rejected"),
        Refusal::Ambiguous(_) => (400, "rejected", "request rejected"),
        Refusal::BadTask(_) => (400, "rejected", "request rejected"),
        Refusal::Forward(ForwardError::Resolve { .. }) => {
            (502, "upstream-unreachable", "tool unreachable")
        }
        Refusal::Forward(ForwardError::Request(_)) => {
            (502, "upstream-unreachable", "tool unreachable")
        }
        Refusal::UpstreamUnreachable(_) => (502, "upstream-unreachable", "tool unreachable"),
        Refusal::UpstreamTimeout => (504, "upstream-timeout", "tool timed out"),
        Refusal::NotCatalogued(_) => (403, "denied", "action denied"),
        Refusal::BadConnect(_) => (400, "rejected", "request rejected"),
        Refusal::Misdirected(_) => (400, "rejected", "request rejected"),
        Refusal::InterceptionUnavailable(_) => (
            502,
            "interception-unavailable",
            "HTTPS interception unavailable",
        ),
        Refusal::BodyTooLarge(_) => (413, "body-too-large", "request body too large"),
        Refusal::Body(BodyError::NotReplayable) => {
            (413, "body-too-large", "request body too large")
        }
        Refusal::Body(BodyError::Timeout(_)) => (408, "body-timeout", "request body too slow"),
        Refusal::Body(BodyError::Read(_)) => (400, "rejected", "request rejected"),
        Refusal::CompressedAnswer => (502, "unchecked-response", "response withheld"),
        Refusal::Upgrade(_) => (400, "rejected", "request rejected"),
        Refusal::UnexpectedUpgrade => (502, "unexpected-upgrade", "unexpected protocol switch"),
        Refusal::Mcp(e) => crate::mcp::problem_parts(e),
        Refusal::HeadTooLarge(_) => (431, "head-too-large", "request head too large"),
        Refusal::HeadTimeout(_) => (408, "head-timeout", "request head too slow"),
        Refusal::Overloaded(_) => (503, "overloaded", "toolgate overloaded"),
    };
    Problem {
        status,
        kind,
        title,
        detail,
    }
}

/// How a request toolgate answered with `refusal` ended, as its chain entry says: the tool
/// failing or timing out is the tool's outcome (`upstream_error`, `timeout`); anything else
/// toolgate refused (`refused`, with the status it answered).
pub fn outcome(refusal: &Refusal) -> toolgate_policy::chain::Outcome {
    use toolgate_policy::chain::Outcome;
    match refusal {
        Refusal::UpstreamTimeout => Outcome::Timeout,
        Refusal::UpstreamUnreachable(_) | Refusal::Forward(_) => Outcome::UpstreamError,
        other => Outcome::Refused(problem(other).status),
    }
}

/// Identifiers that tie a problem to its decision log line and trace.
#[derive(Debug, Clone, Copy)]
pub struct Ids<'a> {
    pub action: &'a str,
    pub decision_id: &'a str,
    pub trace_id: &'a str,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    action: &'a str,
    decision_id: &'a str,
    trace_id: &'a str,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// The JSON body of `problem`.
pub fn body(problem: &Problem, ids: Ids<'_>) -> Bytes {
    body_with(problem, ids, serde_json::Map::new())
}

/// The JSON body of `problem` with `extra` members (an approval's id, expiry and page).
pub fn body_with(
    problem: &Problem,
    ids: Ids<'_>,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Bytes {
    let body = Body {
        kind: format!("{TYPE_BASE}{}", problem.kind),
        title: problem.title,
        status: problem.status,
        detail: &problem.detail,
        action: ids.action,
        decision_id: ids.decision_id,
        trace_id: ids.trace_id,
        extra,
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The members a refusal adds to its problem (and to a JSON-RPC error's `data`): an
/// approval's `approval_id`, `approval_status`, `expires_at`, `approve_url`, and who decided
/// with their comment.
pub fn extensions(refusal: &Refusal) -> serde_json::Map<String, serde_json::Value> {
    match refusal {
        Refusal::ApprovalRequired(p)
        | Refusal::ApprovalDenied(p)
        | Refusal::ApprovalExpired(p)
        | Refusal::ApprovalUsed(p) => p.note.as_ref().map(|n| n.members()).unwrap_or_default(),
        Refusal::TaskEnded(ended) => {
            let mut m = serde_json::Map::new();
            m.insert("task".into(), ended.id.clone().into());
            m.insert("ended_at".into(), ended.at.clone().into());
            m.insert("ended_by".into(), ended.by.clone().into());
            m
        }
        Refusal::DelegationScope { delegated, .. } => {
            let mut m = serde_json::Map::new();
            m.insert("delegated_actions".into(), delegated.clone().into());
            m
        }
        _ => serde_json::Map::new(),
    }
}

/// Write `refusal` as the response; returns the status written.
pub async fn respond(
    session: &mut Session,
    refusal: &Refusal,
    ids: Ids<'_>,
) -> pingora::Result<u16> {
    let problem = problem(refusal);
    let body = body_with(&problem, ids, extensions(refusal));
    let mut header = ResponseHeader::build(problem.status, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(problem.status)
}
