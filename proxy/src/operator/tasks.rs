//! `GET /v1/tasks` (how much the chain ledger holds), `GET /v1/tasks/{id}` (a task's chain,
//! as policy sees it in `input.chain`, its labels and completeness, in each pool — named by
//! the agent, or verified by a task token — that holds it, and its end) and
//! `POST /v1/tasks/{id}/end` (end it: refuse it, kill its credentials; `task_end.rs`).

use std::time::SystemTime;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Map};
use toolgate_policy::approval::{valid_comment, valid_name};
use toolgate_policy::state::{valid_id, EndError, TaskStore};

use super::{invalid, json_reply, problem, problem_with, Call};
use crate::admin::Reply;

/// Tasks and entries held by the ledger.
pub(super) fn stats(call: &Call<'_>) -> Reply {
    let stats = call.gw.ledger.stats();
    json_reply(
        StatusCode::OK,
        &json!({ "tasks": stats.tasks, "entries": stats.entries }),
    )
}

/// Task `id`: `chain` is the task the agent named (else the verified one; empty when the
/// ledger holds neither), `pools` each pool's chain, labels and completeness, and `ended`
/// its end (`at`, `by`, `reason`, `until`) once it ended — when the ledger no longer holds an
/// ended task, `pools` is its copy taken when it ended.
pub(super) fn chain(call: &Call<'_>, id: &str) -> Reply {
    let ended = match call.gw.state.ended(id, SystemTime::now()) {
        Ok(e) => e,
        Err(e) => return super::revoke::unavailable(e),
    };
    let mut pools = call.gw.ledger.describe(id);
    let empty = pools.as_object().is_none_or(Map::is_empty);
    if let Some(copy) = ended
        .as_ref()
        .and_then(|e| e.chain.clone())
        .filter(|_| empty)
    {
        pools = copy;
    }
    let chain = pools
        .get("named")
        .or_else(|| pools.get("verified"))
        .and_then(|p| p.get("chain"))
        .cloned()
        .unwrap_or_else(|| json!([]));
    let mut out = json!({ "task": id, "chain": chain, "pools": pools });
    if let (Some(ended), Some(map)) = (ended, out.as_object_mut()) {
        let mut shown = json!(ended.task);
        if let Some(m) = shown.as_object_mut() {
            m.insert("chain_kept".into(), json!(ended.chain.is_some()));
        }
        map.insert("ended".into(), shown);
    }
    json_reply(StatusCode::OK, &out)
}

/// The body of `POST /v1/tasks/{id}/end`: who ends it and why, both optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    by: Option<String>,
    reason: Option<String>,
}

/// End task `id`: its next request is refused, its credentials die.
pub(super) async fn end(call: &mut Call<'_>, id: &str) -> Reply {
    if !valid_id(id) {
        return invalid(
            "the task id must be 1 to 512 bytes without control characters".to_string(),
        );
    }
    let body = match call.body().await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let body: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return invalid(format!(
                    "the body is not a JSON object like {{\"by\": \"orchestrator\", \"reason\": \"done\"}}: {e}"
                ))
            }
        }
    };
    let by = body.by.unwrap_or_else(|| "operator".to_string());
    if !valid_name(&by) {
        return invalid("\"by\" must be 1 to 128 bytes without control characters".into());
    }
    if let Some(r) = body.reason.as_deref().filter(|r| !valid_comment(r)) {
        return invalid(format!(
            "\"reason\" must be at most 1024 bytes without control characters ({} bytes given)",
            r.len()
        ));
    }
    let listener = call.listener.label();
    match crate::task_end::end(call.gw, id, &by, body.reason).await {
        Ok(report) => {
            let answer = json!({
                "ended": report.ended,
                "changed": report.changed,
                "credentials": report.credentials,
                "exchanged": report.exchanged,
            });
            match &report.unsaved {
                None => json_reply(StatusCode::OK, &answer),
                Some(why) => {
                    tracing::error!(target: "toolgate::operator", listener, "{why}");
                    let mut extra = Map::new();
                    extra.insert("ended".into(), json!(report.ended));
                    problem_with(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "state-not-saved",
                        "end not saved",
                        format!("the task ended and is refused now, but {why}"),
                        extra,
                    )
                }
            }
        }
        Err(EndError::Unavailable(e)) => super::revoke::unavailable(e),
        Err(full @ EndError::Full) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "tasks-full",
            "ended tasks full",
            full.to_string(),
        ),
        Err(overflow @ EndError::Overflow) => invalid(overflow.to_string()),
    }
}
