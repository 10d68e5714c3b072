//! `GET /v1/approvals` (pending and approved approvals), `GET /v1/approvals/{id}` (one, with
//! its task's chain so far) and `POST /v1/approvals/{id}/approve|deny` (a human's verdict,
//! `{"approver": "...", "comment": "..."}`). Never a credential value: an approval holds the
//! request as a human is shown it.

use std::time::SystemTime;

use http::StatusCode;
use serde_json::{json, Map, Value};
use toolgate_policy::approval::parse_verdict;
use toolgate_policy::state::{Approval, ApprovalError, StateUnavailable};

use super::{invalid, json_reply, problem, problem_with, Call};
use crate::admin::Reply;
use crate::approval::{self, store, valid_approval_id};

/// An approval as the API answers it: the stored fields and where a human approves it.
fn shown(call: &Call<'_>, a: &Approval) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        let url = call.gw.snapshot().config.approvals.approve_url(&a.id);
        map.insert("approve_url".into(), json!(url));
    }
    v
}

/// The approvals in force, oldest first.
pub(super) fn list(call: &Call<'_>) -> Reply {
    let snapshot = call.gw.snapshot();
    let listed = store(call.gw).list(snapshot.config.approvals.bounds(), SystemTime::now());
    approval::flush(call.gw, &snapshot);
    match listed {
        Ok(list) => {
            let items: Vec<Value> = list.iter().map(|a| shown(call, a)).collect();
            json_reply(StatusCode::OK, &json!({ "approvals": items }))
        }
        Err(e) => unavailable(e),
    }
}

/// One approval, whatever its status, with its task's chain as policy sees it now.
pub(super) fn show(call: &Call<'_>, id: &str) -> Reply {
    if !valid_approval_id(id) {
        return not_found(id);
    }
    let snapshot = call.gw.snapshot();
    let found = store(call.gw).get(id, snapshot.config.approvals.bounds(), SystemTime::now());
    approval::flush(call.gw, &snapshot);
    match found {
        Ok(Some(a)) => {
            let pools = call.gw.ledger.describe(&a.task);
            let pool = if a.task_verified { "verified" } else { "named" };
            let chain = pools
                .get(pool)
                .and_then(|p| p.get("chain"))
                .cloned()
                .unwrap_or_else(|| json!([]));
            let mut v = shown(call, &a);
            if let Some(map) = v.as_object_mut() {
                map.insert("chain".into(), chain);
            }
            json_reply(StatusCode::OK, &v)
        }
        Ok(None) => not_found(id),
        Err(e) => unavailable(e),
    }
}

/// Approve (`approve`) or deny approval `id` with the body's approver and comment.
pub(super) async fn decide(call: &mut Call<'_>, id: &str, approve: bool) -> Reply {
    let body = match call.body().await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let verdict = match parse_verdict(&body) {
        Ok(v) => v,
        Err(e) => return invalid(e.to_string()),
    };
    if !valid_approval_id(id) {
        return not_found(id);
    }
    let snapshot = call.gw.snapshot();
    let decided = store(call.gw).decide(
        id,
        approve,
        &verdict,
        snapshot.config.approvals.bounds(),
        SystemTime::now(),
    );
    approval::flush(call.gw, &snapshot);
    let listener = call.listener.label();
    let verb = if approve { "approved" } else { "denied" };
    match decided {
        Ok(stored) => {
            let a = &stored.value;
            tracing::warn!(target: "toolgate::operator", listener, approval = %a.id, action = %a.action, task = %a.task, approver = ?verdict.approver, "{verb}");
            let answer = json!({ "approval": shown(call, a) });
            match stored.unsaved {
                None => json_reply(StatusCode::OK, &answer),
                Some(e) => {
                    tracing::error!(target: "toolgate::operator", listener, approval = %a.id, "{e}");
                    let mut extra = Map::new();
                    extra.insert("approval".into(), shown(call, a));
                    problem_with(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "state-not-saved",
                        "approval not saved",
                        format!("{verb} in memory and in force now, but {e}"),
                        extra,
                    )
                }
            }
        }
        Err(ApprovalError::NotFound(_)) => not_found(id),
        Err(e @ ApprovalError::NotPending { status, .. }) => {
            let mut extra = Map::new();
            extra.insert("approval_status".into(), json!(status.as_str()));
            problem_with(
                StatusCode::CONFLICT,
                "approval-not-pending",
                "approval not pending",
                e.to_string(),
                extra,
            )
        }
        Err(ApprovalError::Unavailable(e)) => unavailable(e),
        Err(ApprovalError::Full(full)) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "approvals-full",
            "approvals full",
            full.to_string(),
        ),
    }
}

fn not_found(id: &str) -> Reply {
    let shown: String = id.chars().take(64).collect();
    problem(
        StatusCode::NOT_FOUND,
        "approval-not-found",
        "no such approval",
        format!("no approval {shown:?} is known: it never existed, or it ended longer ago than approvals.retention"),
    )
}

fn unavailable(e: StateUnavailable) -> Reply {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "state-unavailable",
        "state unavailable",
        e.to_string(),
    )
}
