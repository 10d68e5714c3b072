//! The operator API (DESIGN.md §10): every `/v1/…` endpoint, on the admin listener and on
//! the operator socket (`listen.operator`), behind authentication on both.
//!
//! The agent shares the pod's network namespace, so it reaches the admin listener like any
//! loopback peer: a peer address proves nothing. On the admin listener every request must
//! carry `Authorization: Bearer <admin.token_file>`; without a configured token the API is
//! off there (403). On the socket the filesystem is the authentication (mode 0600, in a
//! directory the agent's container does not mount); a configured token is required there
//! too. Failures are answered 401, counted in `toolgate_operator_auth_failures_total` and
//! logged with the peer — never with the token presented.
//!
//! Adding an endpoint: a handler in `operator/<area>.rs` taking a [`Call`], and one arm in
//! [`route`]. Errors are `application/problem+json` ([`problem`]); bodies are read with
//! [`Call::body`], bounded in size and time.

mod approvals;
mod auth;
pub mod introspect;
mod revoke;
mod tasks;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::time::Duration;

use http::{Method, StatusCode};
use pingora::protocols::http::ServerSession;
use serde_json::{json, Map, Value};

pub use auth::Listener;

use crate::admin::Reply;
use crate::gateway::Gateway;
use crate::problem::TYPE_BASE;

/// Largest request body an operator endpoint reads.
pub const MAX_BODY: usize = 4096;
/// How long an operator endpoint waits for the whole request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// One authenticated operator request.
pub struct Call<'a> {
    pub gw: &'a Gateway,
    pub session: &'a mut ServerSession,
    pub listener: Listener,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Call<'_> {
    /// The request body: at most [`MAX_BODY`] bytes, within [`BODY_TIMEOUT`].
    pub async fn body(&mut self) -> Result<Vec<u8>, Reply> {
        self.body_up_to(MAX_BODY).await
    }

    /// The request body: at most `limit` bytes, within [`BODY_TIMEOUT`].
    pub async fn body_up_to(&mut self, limit: usize) -> Result<Vec<u8>, Reply> {
        let read = async {
            let mut body = Vec::new();
            loop {
                match self.session.read_request_body().await {
                    Ok(Some(chunk)) if body.len().saturating_add(chunk.len()) > limit => {
                        return Err(problem(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body-too-large",
                            "request body too large",
                            format!("this operator request is at most {limit} bytes"),
                        ))
                    }
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => return Ok(body),
                    Err(e) => return Err(invalid(format!("cannot read the body: {e}"))),
                }
            }
        };
        tokio::time::timeout(BODY_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                Err(problem(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    "request body too slow",
                    format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
                ))
            })
    }
}

/// Authenticate the request, then answer it. Every `/v1` path comes here, known or not, so
/// an unauthenticated caller learns nothing about which endpoints exist.
pub async fn serve(gw: &Gateway, listener: Listener, session: &mut ServerSession) -> Reply {
    let method = session.req_header().method.clone();
    let path = session.req_header().uri.path().to_string();
    let rest = path
        .strip_prefix("/v1")
        .unwrap_or_default()
        .trim_start_matches('/');
    // Introspection and the revocation feed also admit the tools' introspection clients.
    let raw: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let authenticated = if introspect::for_clients(&raw) {
        introspect::authenticate(gw, listener, session)
    } else {
        auth::authenticate(gw, listener, session)
    };
    if let Err(refused) = authenticated {
        return refused;
    }
    let mut segments = Vec::new();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        match percent_encoding::percent_decode_str(raw).decode_utf8() {
            Ok(s) => segments.push(s),
            Err(_) => return invalid("a path segment is not UTF-8 once percent-decoded".into()),
        }
    }
    let mut call = Call {
        gw,
        session,
        listener,
    };
    route(&mut call, &method, &segments).await
}

/// The endpoints: one arm each.
async fn route(call: &mut Call<'_>, method: &Method, segments: &[Cow<'_, str>]) -> Reply {
    let segments: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["revoke"]) => revoke::list(call),
        (&Method::POST, ["revoke"]) => revoke::create(call).await,
        (&Method::GET, ["tasks"]) => tasks::stats(call),
        (&Method::GET, ["tasks", id]) => tasks::chain(call, id),
        (&Method::POST, ["tasks", id, "end"]) => tasks::end(call, id).await,
        (&Method::POST, ["introspect"]) => introspect::introspect(call).await,
        (&Method::GET, ["revocations", "feed"]) => introspect::feed(call),
        (&Method::GET, ["approvals"]) => approvals::list(call),
        (&Method::GET, ["approvals", id]) => approvals::show(call, id),
        (&Method::POST, ["approvals", id, "approve"]) => approvals::decide(call, id, true).await,
        (&Method::POST, ["approvals", id, "deny"]) => approvals::decide(call, id, false).await,
        (_, ["revoke"]) => method_not_allowed("GET, POST"),
        (_, ["tasks"] | ["tasks", _] | ["approvals"] | ["approvals", _]) => {
            method_not_allowed("GET")
        }
        (_, ["approvals", _, "approve" | "deny"] | ["tasks", _, "end"] | ["introspect"]) => {
            method_not_allowed("POST")
        }
        (_, ["revocations", "feed"]) => method_not_allowed("GET"),
        _ => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such operator endpoint",
            "the operator API serves /v1/revoke, /v1/tasks, /v1/tasks/{id}, /v1/tasks/{id}/end, /v1/approvals, /v1/approvals/{id}, /v1/approvals/{id}/approve|deny, /v1/introspect and /v1/revocations/feed".into(),
        ),
    }
}

/// A JSON answer.
pub fn json_reply(status: StatusCode, body: &Value) -> Reply {
    Reply::bytes(
        status,
        "application/json",
        serde_json::to_vec(body).unwrap_or_default(),
    )
}

/// A problem answer (RFC 9457) of type `urn:toolgate:problem:<kind>`.
pub fn problem(status: StatusCode, kind: &str, title: &str, detail: String) -> Reply {
    problem_with(status, kind, title, detail, Map::new())
}

/// [`problem`] with extension members.
pub fn problem_with(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: String,
    mut extra: Map<String, Value>,
) -> Reply {
    extra.insert("type".into(), json!(format!("{TYPE_BASE}{kind}")));
    extra.insert("title".into(), json!(title));
    extra.insert("status".into(), json!(status.as_u16()));
    extra.insert("detail".into(), json!(detail));
    Reply::bytes(
        status,
        "application/problem+json",
        serde_json::to_vec(&Value::Object(extra)).unwrap_or_default(),
    )
}

/// A 400 for a request the operator can fix.
pub fn invalid(detail: String) -> Reply {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid-request",
        "invalid operator request",
        detail,
    )
}

fn method_not_allowed(allow: &'static str) -> Reply {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "method not allowed",
        format!("this endpoint answers {allow}"),
    )
    .with_header(http::header::ALLOW, allow)
}
