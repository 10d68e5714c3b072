//! `GET /v1/tasks` (how much the chain ledger holds) and `GET /v1/tasks/{id}` (a task's
//! chain, as policy sees it in `input.chain`).

use http::StatusCode;
use serde_json::json;

use super::{json_reply, Call};
use crate::admin::Reply;

/// Tasks and entries held by the ledger.
pub(super) fn stats(call: &Call<'_>) -> Reply {
    let stats = call.gw.ledger.stats();
    json_reply(
        StatusCode::OK,
        &json!({ "tasks": stats.tasks, "entries": stats.entries }),
    )
}

/// The chain of task `id` (empty when the ledger does not hold it).
pub(super) fn chain(call: &Call<'_>, id: &str) -> Reply {
    let chain = serde_json::to_value(call.gw.ledger.history(id)).unwrap_or_default();
    json_reply(StatusCode::OK, &json!({ "task": id, "chain": chain }))
}
