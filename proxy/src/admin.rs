//! The admin listener's HTTP app: health and readiness for probes, metrics for Prometheus,
//! the public keys of minted credentials (`/.well-known/jwks.json`, for tools) and the
//! interception CA's certificate (`/ca.pem`, for agents' trust bundles) and the approval page
//! (`/approvals`, which holds no data: it calls the authenticated API) — open, read-only —
//! and the dispatch of `/v1/…` to the operator API, which authenticates every request
//! itself (see `operator`). The same app serves the operator socket (`listen.operator`).

use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::gateway::Gateway;
use crate::operator::{self, Listener};

/// Serves the open endpoints and hands `/v1/` to the operator API, on one listener.
#[derive(Debug)]
pub struct Admin {
    gateway: Arc<Gateway>,
    listener: Listener,
}

/// A response, before it is written.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Reply {
    /// A plain-text reply.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply::bytes(status, TEXT, body.into().into_bytes())
    }

    /// A reply of `content_type`.
    pub fn bytes(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// `self` with one more header.
    pub fn with_header(mut self, name: HeaderName, value: &'static str) -> Reply {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }
}

impl Admin {
    /// The app of `listener`, reporting on `gateway`.
    pub fn new(gateway: Arc<Gateway>, listener: Listener) -> Admin {
        Admin { gateway, listener }
    }

    async fn route(&self, session: &mut ServerSession) -> Reply {
        let path = session.req_header().uri.path();
        // Only the operator module answers under /v1, and only once it has authenticated
        // the caller: no open endpoint shares that prefix.
        if path == "/v1" || path.starts_with("/v1/") {
            return operator::serve(&self.gateway, self.listener, session).await;
        }
        let method = session.req_header().method.clone();
        match (method, path) {
            (Method::GET, "/healthz") => Reply::text(StatusCode::OK, "ok\n"),
            (Method::GET, "/readyz") if self.gateway.is_ready() => Reply::text(
                StatusCode::OK,
                format!(
                    "ready, policy revision {}\n",
                    self.gateway.snapshot().policy.revision()
                ),
            ),
            (Method::GET, "/readyz") => Reply::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            (Method::GET, "/metrics") => Reply::bytes(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.gateway.metrics.render().into_bytes(),
            ),
            (Method::GET, "/ca.pem") => match &self.gateway.snapshot().authority {
                Some(ca) => Reply::bytes(
                    StatusCode::OK,
                    "application/x-pem-file",
                    ca.cert_pem().to_vec(),
                ),
                None => Reply::text(
                    StatusCode::NOT_FOUND,
                    "no interception CA is configured (tls.ca)\n",
                ),
            },
            (Method::GET, "/approvals") => Reply::bytes(
                StatusCode::OK,
                "text/html; charset=utf-8",
                crate::approval::page::HTML.as_bytes().to_vec(),
            )
            .with_header(
                http::header::CONTENT_SECURITY_POLICY,
                crate::approval::page::CSP.as_str(),
            )
            .with_header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .with_header(http::header::REFERRER_POLICY, "no-referrer"),
            (Method::GET, "/.well-known/jwks.json") => Reply::bytes(
                StatusCode::OK,
                "application/jwk-set+json",
                serde_json::to_vec(&self.gateway.keys.jwks()).unwrap_or_default(),
            ),
            (
                _,
                "/healthz"
                | "/readyz"
                | "/metrics"
                | "/.well-known/jwks.json"
                | "/ca.pem"
                | "/approvals",
            ) => Reply::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
                .with_header(http::header::ALLOW, "GET"),
            _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let reply = self.route(session).await;
        let mut response = Response::builder()
            .status(reply.status)
            .header(http::header::CONTENT_TYPE, reply.content_type)
            .header(http::header::CONTENT_LENGTH, reply.body.len())
            .header(http::header::CACHE_CONTROL, "no-store");
        for (name, value) in reply.headers {
            response = response.header(name, value);
        }
        response.body(reply.body).unwrap_or_default()
    }
}
