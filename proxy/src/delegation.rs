//! Delegation on the data path: `POST http://toolgate.internal/delegate` on the proxy
//! listener, with `{"to", "actions", "scopes", "ttl"}`, is the action `task.delegate` of the
//! current task. It is identified like any request, narrowed to what the task holds itself,
//! then evaluated like any action — revocation, the task's end, the task's own delegation,
//! policy (`input.action.attributes`: `to`, `actions`, `scopes`, `ttl` in seconds, `depth`) —
//! recorded in the chain, the decision log and a span; on allow toolgate answers itself with a
//! delegation token signed with `delegation.key_file` (see `toolgate_policy::delegation` for
//! its claims). Nothing is forwarded. `toolgate.internal` is reserved: no tool may use it.

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{json, Value as Json};
use toolgate_policy::accept::Via;
use toolgate_policy::chain::Outcome;
use toolgate_policy::classify::Classification;
use toolgate_policy::delegation::{
    self, Claims, GrantError, Own, RequestError, ACTION, HOST, PATH,
};
use toolgate_policy::prepare::{Head, Prepared};
use toolgate_policy::state::{Issued, TaskStore};

use crate::credential::Unavailable;
use crate::evaluate;
use crate::gateway::{Gateway, Snapshot};
use crate::pipeline::Exchange;
use crate::problem::Refusal;
use crate::record;

/// Largest delegation request body read.
pub const MAX_BODY: usize = 4096;

/// A delegation token toolgate issued in this exchange, for its record.
#[derive(Debug, Clone)]
pub struct Delegated {
    pub to: String,
    pub jti: String,
    pub depth: u64,
}

/// Whether the request is addressed to toolgate itself (`toolgate.internal`) on the proxy
/// listener, rather than to a tool.
pub fn requested(head: &Head) -> bool {
    let a = &head.accepted;
    a.tool.is_none()
        && matches!(a.via, Via::Host | Via::AbsoluteForm)
        && a.host.eq_ignore_ascii_case(HOST)
}

/// Decide the delegation request `head` and, on allow, answer it with a delegation token.
/// `Ok` when toolgate answered (the token); `Err` the refusal to answer with.
pub async fn serve(
    gw: &Gateway,
    snapshot: &Snapshot,
    session: &mut Session,
    head: Head,
    x: &mut Exchange,
) -> Result<(), Refusal> {
    let config = &snapshot.config;
    x.action = Arc::from(ACTION);
    let request = &head.accepted.request;
    if request.method != http::Method::POST || request.path != PATH || head.accepted.tls {
        return Err(RequestError::Endpoint.into());
    }
    let Some(settings) = &config.delegation else {
        return Err(Refusal::DelegationOff);
    };
    let budget = config.limits.upstream_timeout;
    let body = tokio::time::timeout(budget, crate::body::read_capped(session, MAX_BODY))
        .await
        .map_err(|_| Refusal::Body(crate::body::BodyError::Timeout(budget)))??;
    if body.len() > MAX_BODY {
        return Err(Refusal::BodyTooLarge(MAX_BODY));
    }
    let asked = delegation::parse_request(&body)?;
    let own = Own::of(x.task_claims.as_deref(), x.task_verified);
    let grant = delegation::grant(&asked, &own, &config.agent.id)?;
    let now = SystemTime::now();
    let iat = delegation::secs(now);
    let exp = delegation::expiry(iat, asked.ttl, settings.max_ttl, own.expires);
    let attributes: Vec<(Arc<str>, Json)> = vec![
        (Arc::from("to"), json!(asked.to)),
        (Arc::from("actions"), json!(grant.actions)),
        (Arc::from("scopes"), json!(grant.scopes)),
        (Arc::from("ttl"), json!(exp.saturating_sub(iat))),
        (Arc::from("depth"), json!(grant.depth)),
    ];
    let prepared = Prepared {
        accepted: head.accepted,
        classification: Classification {
            tool: None,
            action: Arc::from(ACTION),
            attributes,
        },
        body: serde_json::from_slice(&body).ok(),
        rpc: None,
    };
    let headers = session.req_header().headers.clone();
    match evaluate::evaluate(gw, snapshot, &prepared, None, &headers, &[], x) {
        Ok(_) => {}
        // An approval binds one request to a tool; a delegation cannot be held for one.
        Err(Refusal::ApprovalRequired(pending)) => {
            return Err(Refusal::Denied(format!(
                "{} (a delegation cannot wait for a human approval)",
                pending.reason
            )))
        }
        Err(refusal) => return Err(refusal),
    }

    let jti = uuid::Uuid::now_v7().to_string();
    let act = delegation::act(&config.agent.id, x.task_claims.as_deref());
    let traceparent = record::trace::traceparent(&x.trace.trace_id, &x.span_id, true);
    let scope = (!grant.scopes.is_empty()).then(|| grant.scopes.join(" "));
    let parent = x.delegation_token.as_deref().filter(|_| own.depth >= 1);
    let claims = Claims {
        iss: &settings.issuer,
        sub: &asked.to,
        aud: &asked.to,
        iat,
        nbf: iat,
        exp,
        jti: &jti,
        task: &x.task_id,
        actions: &grant.actions,
        scope,
        depth: grant.depth,
        task_verified: own.task_verified,
        act: &act,
        traceparent: Some(&traceparent),
        parent,
    };
    let token = jsonwebtoken::encode(settings.key.header(), &claims, settings.key.encoding_key())
        .map_err(|e| {
        evaluate::failed_after_allow(x);
        Unavailable {
            name: "delegation".to_string(),
            reason: format!("cannot sign the delegation token: {e}"),
        }
    })?;
    if token.len() > toolgate_policy::config::MAX_TOKEN_BYTES {
        // No receiver would accept it (every JWT is held to this size).
        evaluate::failed_after_allow(x);
        return Err(GrantError::TooLong(token.len()).into());
    }
    gw.state.issued(
        &x.task_id,
        Issued {
            jti: jti.clone(),
            kind: "delegation",
            credential: "delegation".to_string(),
            agent: asked.to.clone(),
            exp,
        },
        now,
    );
    let answer = json!({
        "token": token,
        "task": x.task_id,
        "to": asked.to,
        "actions": grant.actions,
        "scopes": grant.scopes,
        "not_delegated": grant.dropped,
        "depth": grant.depth,
        "expires_at": toolgate_policy::state::rfc3339(exp),
        "jti": jti,
        "decision_id": x.decision_id,
        "trace_id": x.trace_id,
    });
    x.delegated = Some(Delegated {
        to: asked.to,
        jti,
        depth: grant.depth,
    });
    // Settled before the agent can read the answer, as a tool's answer would be.
    record::settle(gw, x, Outcome::Response(200));
    if let Err(e) = respond(session, &answer).await {
        tracing::debug!(error = %e, "could not write the delegation token to the agent");
    }
    Ok(())
}

async fn respond(session: &mut Session, answer: &Json) -> pingora::Result<()> {
    let body = Bytes::from(serde_json::to_vec(answer).unwrap_or_default());
    let mut header = ResponseHeader::build(200, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}
