//! The end of a task: from then on its requests are refused before policy (`task-ended`,
//! `evaluate.rs`), its chain is copied and kept for audit (`chain.ended_retention`), and
//! every credential issued for it dies — minted JWTs and delegation tokens are answered
//! `active: false` by introspection and listed in the revocation feed (`operator/introspect`),
//! tokens exchanged for it are revoked at their STS (RFC 7009), and its root span is exported
//! (`toolgate.task.closed: ended`). Revoking a task or this agent (`POST /v1/revoke`) kills
//! its exchanged tokens the same way.
//!
//! With the memory backend all of this is per process: end a task handed on to other agents
//! on each toolgate that serves it (a shared backend, issue 16, will share ends).

use std::time::SystemTime;

use serde::Serialize;
use toolgate_policy::state::{End, EndBounds, EndError, EndedTask, Issued, Kind, TaskStore};

use crate::credential::revocation::{revoke_all, Revoked};
use crate::gateway::Gateway;

/// What ending a task did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ended: EndedTask,
    /// `false` when the task had ended already (the first end stands).
    pub changed: bool,
    /// The unexpired credentials toolgate issued under the task (ids only), now dead.
    pub credentials: Vec<Issued>,
    /// What happened to each token exchanged for the task.
    pub exchanged: Vec<Revoked>,
    /// The end holds in memory but could not be written to the state file.
    #[serde(skip)]
    pub unsaved: Option<String>,
}

/// End `task`, as `by` (with an optional `reason`).
pub async fn end(
    gw: &Gateway,
    task: &str,
    by: &str,
    reason: Option<String>,
) -> Result<Report, EndError> {
    let snapshot = gw.snapshot();
    let chain = &snapshot.config.chain;
    let bounds = EndBounds {
        retention: chain.ended_retention,
        keep_chains: chain.max_tasks,
    };
    let end = End {
        task: task.to_string(),
        by: by.to_string(),
        reason,
        chain: Some(gw.ledger.describe(task)),
    };
    let stored = gw.state.end(end, bounds, SystemTime::now())?;
    // The task's root span closes now (`toolgate.task.closed: ended`), not when it goes idle.
    if let Some(spans) = &gw.spans {
        spans.end_task(task);
    }
    // Also when it had ended already: a token exchanged by a request decided just before
    // the first end goes now.
    let exchanged = revoke_all(gw.exchanges.end_task(Some(task)).await).await;
    let ending = stored.value;
    tracing::warn!(target: "toolgate::operator", task, by = %ending.ended.by, changed = ending.changed, credentials = ending.credentials.len(), exchanged = exchanged.len(), "task ended");
    Ok(Report {
        ended: ending.ended,
        changed: ending.changed,
        credentials: ending.credentials,
        exchanged,
        unsaved: stored.unsaved,
    })
}

/// After a revocation of `kind` `id`: the tokens exchanged for a revoked task, or for any
/// task of this agent when it is the one revoked, are revoked at their STS.
pub async fn revoked(gw: &Gateway, kind: Kind, id: &str) -> Vec<Revoked> {
    let retired = match kind {
        Kind::Task => gw.exchanges.end_task(Some(id)).await,
        Kind::Agent if gw.snapshot().config.agent.id == id => gw.exchanges.end_task(None).await,
        Kind::Agent | Kind::Jti => Vec::new(),
    };
    revoke_all(retired).await
}
