//! `GET /v1/revoke` (the revocations in force) and `POST /v1/revoke` (add one). Revoking a
//! task, or this agent, also revokes the tokens exchanged for it at their STS
//! (`task_end::revoked`).

use std::time::SystemTime;

use http::StatusCode;
use serde_json::{json, Map};
use toolgate_policy::state::{self, Lifetimes, Refused, RevokeError, StateUnavailable};

use super::{invalid, json_reply, problem, problem_with, Call};
use crate::admin::Reply;

/// Every revocation in force.
pub(super) fn list(call: &Call<'_>) -> Reply {
    match call.gw.state.revocations(SystemTime::now()) {
        Ok(list) => json_reply(StatusCode::OK, &json!({ "revocations": list })),
        Err(e) => unavailable(e),
    }
}

/// Add the revocation the body asks for; a revocation in force is only ever lengthened.
pub(super) async fn create(call: &mut Call<'_>) -> Reply {
    let body = match call.body().await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let admin = &call.gw.snapshot().config.admin;
    let lifetimes = Lifetimes {
        default: admin.revocation_ttl,
        max: admin.max_revocation_ttl,
    };
    let revocation = match state::parse_request(&body, lifetimes) {
        Ok(r) => r,
        Err(e) => return invalid(e.to_string()),
    };
    let listener = call.listener.label();
    match call.gw.state.revoke(&revocation, SystemTime::now()) {
        Ok(added) => {
            let e = &added.entry;
            tracing::warn!(target: "toolgate::operator", listener, kind = e.kind.as_str(), id = ?e.id, expires = %e.expires, changed = added.changed, "revoked");
            let exchanged = crate::task_end::revoked(call.gw, e.kind, &e.id).await;
            json_reply(
                StatusCode::OK,
                &json!({ "revoked": added.entry, "changed": added.changed, "exchanged": exchanged }),
            )
        }
        Err(RevokeError::Refused(refused @ Refused::Full { kind, .. })) => {
            call.gw.metrics.revocation_refused(kind.as_str());
            tracing::error!(target: "toolgate::operator", listener, kind = kind.as_str(), id = ?revocation.id, "revocation refused: {refused}");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "revocations-full",
                "revocations full",
                refused.to_string(),
            )
        }
        Err(RevokeError::Refused(overflow @ Refused::Overflow)) => invalid(overflow.to_string()),
        Err(RevokeError::Unavailable(e)) => unavailable(e),
        Err(not_saved @ RevokeError::NotSaved { .. }) => {
            tracing::error!(target: "toolgate::operator", listener, "{not_saved}");
            let mut extra = Map::new();
            if let RevokeError::NotSaved { added, .. } = &not_saved {
                extra.insert("revoked".into(), json!(added.entry));
            }
            problem_with(
                StatusCode::INTERNAL_SERVER_ERROR,
                "state-not-saved",
                "revocation not saved",
                not_saved.to_string(),
                extra,
            )
        }
    }
}

pub(super) fn unavailable(e: StateUnavailable) -> Reply {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "state-unavailable",
        "state unavailable",
        e.to_string(),
    )
}
