//! `GET /v1/revoke` (the revocations in force) and `POST /v1/revoke` (add one). Revoking a
//! task, or this agent, also revokes the tokens exchanged for it at their STS
//! (`task_end::revoked`).

use std::time::SystemTime;

use http::StatusCode;
use serde_json::{json, Map};
use toolgate_policy::state::{self, Lifetimes, Refused};

use super::{invalid, json_reply, problem, problem_with, Call};
use crate::admin::Reply;
use crate::state::{RevokeFailure, Unavailable};

/// Every revocation in force.
pub(super) async fn list(call: &Call<'_>) -> Reply {
    match call.gw.store.revocations(SystemTime::now()).await {
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
    match call.gw.store.revoke(&revocation, SystemTime::now()).await {
        Ok(added) => {
            let e = &added.entry;
            tracing::warn!(target: "toolgate::operator", listener, kind = e.kind.as_str(), id = ?e.id, expires = %e.expires, changed = added.changed, "revoked");
            let exchanged = crate::task_end::revoked(call.gw, e.kind, &e.id).await;
            json_reply(
                StatusCode::OK,
                &json!({ "revoked": added.entry, "changed": added.changed, "exchanged": exchanged }),
            )
        }
        Err(RevokeFailure::Refused(refused @ Refused::Full { kind, .. })) => {
            call.gw.metrics.revocation_refused(kind.as_str());
            tracing::error!(target: "toolgate::operator", listener, kind = kind.as_str(), id = ?revocation.id, "revocation refused: {refused}");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "revocations-full",
                "revocations full",
                refused.to_string(),
            )
        }
        Err(RevokeFailure::Refused(overflow @ Refused::Overflow)) => invalid(overflow.to_string()),
        Err(RevokeFailure::Unavailable(e)) => unavailable(e),
        Err(RevokeFailure::NotSaved { added, message }) => {
            tracing::error!(target: "toolgate::operator", listener, "{message}");
            let mut extra = Map::new();
            extra.insert("revoked".into(), json!(added.entry));
            problem_with(
                StatusCode::INTERNAL_SERVER_ERROR,
                "state-not-saved",
                "revocation not saved",
                message,
                extra,
            )
        }
    }
}

pub(super) fn unavailable(e: Unavailable) -> Reply {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "state-unavailable",
        "state unavailable",
        e.to_string(),
    )
}
