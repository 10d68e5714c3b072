//! The admin listener: health and readiness for probes, metrics for Prometheus, the public
//! keys of minted credentials (`/.well-known/jwks.json`, for tools), the interception CA's
//! certificate (`/ca.pem`, for agents' trust bundles), and the operator API (`/v1/…`:
//! revocations, task chains). The operator API answers loopback peers,
//! or any peer presenting the bearer token from `admin.token_file`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::gateway::Gateway;
use crate::revocation;

/// Largest request body the admin API reads.
const MAX_BODY: usize = 4096;

/// Serves `/healthz`, `/readyz`, `/metrics` and the operator API.
#[derive(Debug)]
pub struct Admin {
    gateway: Arc<Gateway>,
}

struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    Reply {
        status,
        content_type: TEXT,
        body: body.into().into_bytes(),
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: JSON,
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

/// Compare without leaking where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    /// An admin app reporting on `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Admin {
        Admin { gateway }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let loopback = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| a.ip().is_loopback());
        if loopback {
            return true;
        }
        let snapshot = self.gateway.snapshot();
        match (
            &snapshot.config.admin.token,
            session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION),
        ) {
            (Some(token), Some(given)) => same(token.header_value().as_bytes(), given.as_bytes()),
            _ => false,
        }
    }

    async fn body(session: &mut ServerSession) -> Result<Vec<u8>, Reply> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return Err(text(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("body over {MAX_BODY} bytes\n"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    return Err(text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read body: {e}\n"),
                    ))
                }
            }
        }
    }

    async fn route(&self, session: &mut ServerSession) -> Reply {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if path.starts_with("/v1/") && !self.authorized(session) {
            return text(
                StatusCode::FORBIDDEN,
                "the operator API answers loopback peers or the admin token\n",
            );
        }
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (Method::GET, "/readyz") if self.gateway.is_ready() => text(
                StatusCode::OK,
                format!(
                    "ready, policy revision {}\n",
                    self.gateway.snapshot().policy.revision()
                ),
            ),
            (Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            (Method::GET, "/metrics") => Reply {
                status: StatusCode::OK,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: self.gateway.metrics.render().into_bytes(),
            },
            (Method::GET, "/ca.pem") => match &self.gateway.snapshot().authority {
                Some(ca) => Reply {
                    status: StatusCode::OK,
                    content_type: "application/x-pem-file",
                    body: ca.cert_pem().to_vec(),
                },
                None => text(
                    StatusCode::NOT_FOUND,
                    "no interception CA is configured (tls.ca)\n",
                ),
            },
            (Method::GET, "/.well-known/jwks.json") => Reply {
                status: StatusCode::OK,
                content_type: "application/jwk-set+json",
                body: serde_json::to_vec(&self.gateway.keys.jwks()).unwrap_or_default(),
            },
            (Method::GET, "/v1/revoke") => json(
                StatusCode::OK,
                &json!({ "revocations": self.gateway.revocations.list() }),
            ),
            (Method::POST, "/v1/revoke") => self.revoke(session).await,
            (Method::GET, "/v1/tasks") => {
                let stats = self.gateway.ledger.stats();
                json(
                    StatusCode::OK,
                    &json!({ "tasks": stats.tasks, "entries": stats.entries }),
                )
            }
            (Method::GET, p) if p.starts_with("/v1/tasks/") => {
                let task = p.trim_start_matches("/v1/tasks/");
                let pools = self.gateway.ledger.describe(task);
                let chain = pools
                    .get("named")
                    .or_else(|| pools.get("verified"))
                    .and_then(|p| p.get("chain"))
                    .cloned()
                    .unwrap_or_else(|| json!([]));
                json(
                    StatusCode::OK,
                    &json!({ "task": task, "chain": chain, "pools": pools }),
                )
            }
            (
                _,
                "/healthz"
                | "/readyz"
                | "/metrics"
                | "/.well-known/jwks.json"
                | "/ca.pem"
                | "/v1/revoke"
                | "/v1/tasks",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn revoke(&self, session: &mut ServerSession) -> Reply {
        let body = match Admin::body(session).await {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        let request: revocation::Request = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": format!("invalid JSON: {e}") }),
                )
            }
        };
        let default_ttl = self.gateway.snapshot().config.admin.revocation_ttl;
        match request.parse(default_ttl) {
            Ok((kind, id, ttl)) => {
                let entry = self.gateway.revocations.revoke(kind, id, ttl);
                tracing::warn!(target: "toolgate::admin", kind = ?entry.kind, id = %entry.id, expires = %entry.expires, "revoked");
                json(StatusCode::OK, &json!({ "revoked": entry }))
            }
            Err(e) => json(StatusCode::BAD_REQUEST, &json!({ "error": e.to_string() })),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let reply = self.route(session).await;
        Response::builder()
            .status(reply.status)
            .header(http::header::CONTENT_TYPE, reply.content_type)
            .header(http::header::CONTENT_LENGTH, reply.body.len())
            .body(reply.body)
            .unwrap_or_default()
    }
}
