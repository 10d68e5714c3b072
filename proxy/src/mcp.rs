//! MCP on the data path. A JSON-RPC batch is decided member by member, in order, each member
//! its own action, decision and chain entry (so a later member sees the earlier ones, as if
//! they had been sent one by one); it is forwarded only if every member is allowed. A refused
//! request is answered as MCP clients expect: HTTP 200 with a JSON-RPC error for each request
//! id (`message` = the reason, `data` = decision id, action, trace id, and for a held call
//! its approval's `approval_id`, `approval_status`, `expires_at` and `approve_url`). A
//! refused message with no id (a notification, or a response to the server) has nobody to
//! answer in JSON-RPC: it gets the usual 403 problem, as streamable HTTP specifies an HTTP
//! error status for it.
//!
//! A request whose MCP routing headers disagree with its body (2026-07-28, `Mcp-Method`,
//! `Mcp-Name`, `Mcp-Param-*`) is answered HTTP 400 with JSON-RPC error -32020 for each id
//! (`null` for a notification), before policy. The answer to an allowed `tools/list` is
//! filtered by policy ([`listing`]); the definitions it lists are remembered and pinned
//! (`toolgate_policy::classify::mcp::definition`).

pub mod admit;
pub mod listing;
pub mod pin;

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{json, Value as Json};
use toolgate_policy::prepare::Prepared;

use crate::pipeline::Exchange;
use crate::problem::{self, Refusal};

/// JSON-RPC error code for a call toolgate refused (implementation-defined server range).
pub const REFUSED: i64 = -32001;
/// JSON-RPC error code for an allowed batch member not forwarded because another was refused.
pub const WITHHELD: i64 = -32002;
pub use toolgate_policy::classify::mcp::headers::{Mismatch, HEADER_MISMATCH};

/// Why toolgate refused an MCP request or answer, beyond a decision.
#[derive(Debug, thiserror::Error)]
pub enum McpRefusal {
    /// Routing headers that disagree with the body: HTTP 400, JSON-RPC -32020.
    #[error(transparent)]
    HeaderMismatch(#[from] Mismatch),
    /// The task named in `params._meta` is not the one the request's header or token names.
    #[error("params._meta[\"toolgate/task\"] names task {meta:?} but {source_name} names {given:?}; a request belongs to one task")]
    TaskConflict {
        meta: String,
        source_name: String,
        given: String,
    },
    /// A `tools/list` answer larger than toolgate filters.
    #[error("the tools/list answer is larger than {0} bytes (mcp.max_list_bytes); a list that cannot be filtered is withheld")]
    ListTooLarge(usize),
    /// A `tools/list` answer toolgate cannot read (compressed).
    #[error("{0}")]
    ListUnreadable(String),
}

/// The status, problem type and title of `refusal` (exhaustive, like `problem::problem`).
pub fn problem_parts(refusal: &McpRefusal) -> (u16, &'static str, &'static str) {
    match refusal {
        McpRefusal::HeaderMismatch(_) => {
            (400, "header-mismatch", "MCP headers do not match the body")
        }
        McpRefusal::TaskConflict { .. } => (400, "rejected", "request rejected"),
        McpRefusal::ListTooLarge(_) | McpRefusal::ListUnreadable(_) => {
            (502, "unchecked-response", "response withheld")
        }
    }
}

/// How a refused MCP request is answered: one entry per JSON-RPC message.
#[derive(Debug, Clone)]
pub struct Reply {
    batch: bool,
    members: Vec<Answer>,
}

#[derive(Debug, Clone)]
struct Answer {
    id: Option<Json>,
    action: Arc<str>,
    decision_id: String,
    /// The member's chain entry, once decided.
    seq: Option<u64>,
    /// Why this member was refused, once decided.
    refused: Option<String>,
}

/// The reply skeleton for an MCP POST (`None` for any other request).
pub fn reply(prepared: &Prepared) -> Option<Reply> {
    let rpc = prepared.rpc.as_ref()?;
    Some(Reply {
        batch: rpc.batch,
        members: rpc
            .members
            .iter()
            .map(|m| Answer {
                id: m.id.clone(),
                action: m.classification.action.clone(),
                decision_id: String::new(),
                seq: None,
                refused: None,
            })
            .collect(),
    })
}

impl Reply {
    /// The chain entries of the members decided so far.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.members.iter().filter_map(|a| a.seq)
    }

    /// Whether any message has an id to answer.
    fn answerable(&self) -> bool {
        self.members.iter().any(|a| a.id.is_some())
    }
}

/// One member's decision in progress (it reads and writes the task's state).
pub type Deciding<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Refusal>> + Send + 'a>>;

/// Decide every member of a batch with `decide` (evaluate, select the credential), in order.
/// All allowed: `Ok`, and the request is forwarded whole with one credential — only if every
/// member selected the same one; its lifetime is the shortest any member was granted and its
/// scopes those every member was granted (`credential::combine`), so the order of the members
/// changes nothing. A batch with a would-deny member in dry-run mode is forwarded as it came,
/// with no credential injected, as a single would-deny request is. Otherwise the first
/// refusal.
pub async fn decide_batch<C: Sync>(
    prepared: &Prepared,
    x: &mut Exchange,
    ctx: &C,
    mut decide: impl for<'a> FnMut(&'a C, &'a Prepared, &'a mut Exchange) -> Deciding<'a>,
) -> Result<(), Refusal> {
    let Some(rpc) = prepared.rpc.as_ref() else {
        return decide(ctx, prepared, x).await;
    };
    let mut first_refusal: Option<(Refusal, Refuser)> = None;
    let mut dry_run = false;
    for (i, member) in rpc.members.iter().enumerate() {
        if i > 0 {
            x.decision_id = uuid::Uuid::now_v7().to_string();
        }
        x.action = member.classification.action.clone();
        let outcome = decide(ctx, &prepared.member(member), x).await;
        dry_run |= x.dry_run;
        if let Some(answer) = x.rpc.as_mut().and_then(|r| r.members.get_mut(i)) {
            answer.decision_id.clone_from(&x.decision_id);
            answer.seq = x.seq;
            answer.refused = outcome.as_ref().err().map(ToString::to_string);
        }
        if let Err(refusal) = outcome {
            if first_refusal.is_none() {
                let refuser = Refuser {
                    action: x.action.clone(),
                    decision_id: x.decision_id.clone(),
                    effect: x.effect,
                    reason: x.reason.clone(),
                };
                first_refusal = Some((refusal, refuser));
            }
        }
    }
    if let Some((refusal, refuser)) = first_refusal {
        // The exchange is logged under the member that refused it.
        x.action = refuser.action;
        x.decision_id = refuser.decision_id;
        x.effect = refuser.effect;
        x.reason = refuser.reason;
        return Err(refusal);
    }
    let grants = std::mem::take(&mut x.member_grants);
    if dry_run {
        // Forwarded as it came: the agent's credentials stay, nothing is injected.
        x.dry_run = true;
        x.strip = Vec::new();
        return Ok(());
    }
    let mut names: Vec<Option<&str>> = grants.iter().map(|(n, _)| n.as_deref()).collect();
    names.dedup();
    match names.as_slice() {
        [] | [None] => Ok(()),
        [Some(name)] => {
            let all: Vec<_> = grants.iter().map(|(_, g)| g.clone()).collect();
            x.grant = Some((name.to_string(), toolgate_policy::credential::combine(&all)));
            Ok(())
        }
        _ => {
            let mut shown: Vec<&str> = names.iter().map(|n| n.unwrap_or("none")).collect();
            shown.sort_unstable();
            shown.dedup();
            let why = format!(
                "the members of this batch were granted different credentials ({}); one request carries one credential: send them separately",
                shown.join(", ")
            );
            if let Some(reply) = x.rpc.as_mut() {
                for answer in &mut reply.members {
                    answer.refused = Some(why.clone());
                }
            }
            Err(Refusal::MixedBatch(why))
        }
    }
}

/// The member whose refusal refuses the batch, as the exchange's record shows it.
struct Refuser {
    action: Arc<str>,
    decision_id: String,
    effect: Option<toolgate_policy::evaluate::Effect>,
    reason: String,
}

/// Whether `refusal` of this exchange is answered in JSON-RPC rather than as a problem: a
/// decision (403) on an MCP request with an id to answer, or a header mismatch.
pub fn answers(x: &Exchange, refusal: &Refusal) -> bool {
    if matches!(refusal, Refusal::Mcp(McpRefusal::HeaderMismatch(_))) {
        return true;
    }
    x.rpc.as_ref().is_some_and(Reply::answerable) && problem::problem(refusal).status == 403
}

/// Write the JSON-RPC error response for a refused MCP request; returns the status written
/// (200 for a decision, as MCP clients expect; 400 for a header mismatch, as 2026-07-28
/// specifies).
pub async fn respond(
    session: &mut Session,
    x: &Exchange,
    refusal: &Refusal,
) -> pingora::Result<u16> {
    let (status, document) = match refusal {
        Refusal::Mcp(McpRefusal::HeaderMismatch(m)) => (400, mismatch(x, m)),
        _ => (200, errors(x, refusal)),
    };
    let body = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(status)
}

/// The -32020 answer to a header mismatch: one error per message (an array for a batch).
fn mismatch(x: &Exchange, m: &Mismatch) -> Json {
    let one = |id: &Json| {
        json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": HEADER_MISMATCH,
                "message": m.to_string(),
                "data": {
                    "decision_id": &x.decision_id,
                    "action": m.action.as_deref().unwrap_or(&x.action),
                    "trace_id": &x.trace_id,
                },
            },
        })
    };
    if m.batch {
        return Json::Array(m.ids.iter().map(one).collect());
    }
    one(m.ids.first().unwrap_or(&Json::Null))
}

/// The JSON-RPC error document: one error object, or an array for a batch.
pub fn errors(x: &Exchange, refusal: &Refusal) -> Json {
    let Some(reply) = x.rpc.as_ref() else {
        return Json::Null;
    };
    let detail = problem::problem(refusal).detail;
    // An approval's id, expiry and page, for the member that was held (or the single call).
    let approval = problem::extensions(refusal);
    let one = |a: &Answer| {
        let decision_id = if a.decision_id.is_empty() {
            &x.decision_id
        } else {
            &a.decision_id
        };
        let (code, message) = match (&a.refused, reply.batch) {
            (Some(reason), _) => (REFUSED, reason.clone()),
            (None, true) => (
                WITHHELD,
                "not forwarded: another member of this batch was refused".to_string(),
            ),
            (None, false) => (REFUSED, detail.clone()),
        };
        let mut data =
            json!({ "decision_id": decision_id, "action": &*a.action, "trace_id": &x.trace_id });
        if code == REFUSED && !reply.batch {
            if let Some(map) = data.as_object_mut() {
                map.extend(approval.clone());
            }
        }
        json!({
            "jsonrpc": "2.0",
            "id": a.id,
            "error": {
                "code": code,
                "message": message,
                "data": data,
            },
        })
    };
    let mut answers = reply.members.iter().filter(|a| a.id.is_some()).map(one);
    if reply.batch {
        Json::Array(answers.collect())
    } else {
        answers.next().unwrap_or(Json::Null)
    }
}
