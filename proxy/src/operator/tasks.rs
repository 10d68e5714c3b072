//! `GET /v1/tasks` (how much the chain ledger holds) and `GET /v1/tasks/{id}` (a task's
//! chain, as policy sees it in `input.chain`, its labels and completeness, in each pool —
//! named by the agent, or verified by a task token — that holds it).

use http::StatusCode;
use serde_json::json;

use super::{json_reply, problem, Call};
use crate::admin::Reply;

/// Tasks and entries held by the state backend.
pub(super) async fn stats(call: &Call<'_>) -> Reply {
    match call.gw.store.stats().await {
        Ok(stats) => json_reply(
            StatusCode::OK,
            &json!({ "tasks": stats.tasks, "entries": stats.entries }),
        ),
        Err(e) => unavailable(e),
    }
}

/// Task `id`: `chain` is the task the agent named (else the verified one; empty when the
/// ledger holds neither), `pools` each pool's chain, labels and completeness.
pub(super) async fn chain(call: &Call<'_>, id: &str) -> Reply {
    let pools = match call.gw.store.task(id).await {
        Ok(pools) => pools,
        Err(e) => return unavailable(e),
    };
    let chain = pools
        .get("named")
        .or_else(|| pools.get("verified"))
        .and_then(|p| p.get("chain"))
        .cloned()
        .unwrap_or_else(|| json!([]));
    json_reply(
        StatusCode::OK,
        &json!({ "task": id, "chain": chain, "pools": pools }),
    )
}

/// The state backend cannot be read.
pub(super) fn unavailable(e: crate::state::Unavailable) -> Reply {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "state-unavailable",
        "state unavailable",
        e.to_string(),
    )
}
