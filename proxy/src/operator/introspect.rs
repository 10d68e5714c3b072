//! Is a credential toolgate issued still alive? `POST /v1/introspect` (RFC 7662: a form body
//! `token=…`) answers `{"active": true, …claims}` for a current token signed with one of
//! toolgate's keys (minted JWTs and delegation tokens) whose task has not ended and whose
//! task, agent (`sub`) and `jti` are not revoked — else `{"active": false}` and nothing more.
//! `GET /v1/revocations/feed` lists what is dead now: ended tasks, the revocations in force,
//! and the unexpired credentials issued under those tasks or to those agents (ids only).
//!
//! Tools authenticate as `introspection.clients` (HTTP Basic, secrets compared in constant
//! time), or with the operator's bearer token; never open.

use std::time::SystemTime;

use base64::Engine as _;
use http::StatusCode;
use jsonwebtoken::Validation;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Map, Value as Json};
use toolgate_policy::config::{Config, CredentialSpec};
use toolgate_policy::state::{rfc3339, Kind, StateUnavailable, TaskStore};

use super::auth::{self, Listener};
use super::{invalid, json_reply, problem, Call};
use crate::admin::Reply;
use crate::gateway::Gateway;

/// Largest introspection request body (a token is at most 8 KiB, form-encoded).
pub const MAX_FORM: usize = 32 * 1024;
/// Most credentials one feed lists; beyond, `credentials_complete` is false.
pub const MAX_FEED_CREDENTIALS: usize = 10_000;

/// Whether `segments` name an endpoint introspection clients may call.
pub(super) fn for_clients(segments: &[&str]) -> bool {
    matches!(segments, ["introspect"] | ["revocations", "feed"])
}

/// `Ok` when the caller is an introspection client (HTTP Basic) or the operator.
pub(super) fn authenticate(
    gw: &Gateway,
    listener: Listener,
    session: &ServerSession,
) -> Result<(), Reply> {
    let mut values = session
        .req_header()
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter();
    let basic = match (values.next(), values.next()) {
        (Some(v), None) => v
            .as_bytes()
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"basic "))
            .then(|| v.as_bytes().get(6..).unwrap_or_default()),
        _ => None,
    };
    let Some(credentials) = basic else {
        return auth::authenticate(gw, listener, session);
    };
    let snapshot = gw.snapshot();
    if client(&snapshot.config, credentials).is_some() {
        return Ok(());
    }
    gw.metrics.operator_auth_failure(listener.label());
    tracing::warn!(target: "toolgate::operator", listener = listener.label(), path = %session.req_header().uri.path(), "introspection client authentication failed");
    Err(problem(
        StatusCode::UNAUTHORIZED,
        "operator-unauthorized",
        "introspection client authentication required",
        "send Authorization: Basic with an id and secret of introspection.clients, or the operator's bearer token".into(),
    )
    .with_header(
        http::header::WWW_AUTHENTICATE,
        "Basic realm=\"toolgate introspection\"",
    ))
}

/// The configured client whose id and secret `encoded` (base64 `id:secret`) holds.
fn client<'c>(config: &'c Config, encoded: &[u8]) -> Option<&'c str> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    // Compared for every client, in constant time per secret: the time taken says nothing
    // about which id or how much of a secret was right.
    let mut found = None;
    for c in &config.introspection.clients {
        let ok = auth::same(secret.as_bytes(), c.secret.expose().as_bytes()) & (c.id == id);
        if ok {
            found = Some(c.id.as_str());
        }
    }
    found
}

/// `POST /v1/introspect`.
pub(super) async fn introspect(call: &mut Call<'_>) -> Reply {
    let body = match call.body_up_to(MAX_FORM).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let tokens: Vec<String> = form_urlencoded::parse(&body)
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .collect();
    let [token] = tokens.as_slice() else {
        return invalid(
            "send one `token` parameter in an application/x-www-form-urlencoded body (RFC 7662)"
                .into(),
        );
    };
    match answer(call.gw, token, SystemTime::now()) {
        Ok(answer) => json_reply(StatusCode::OK, &answer),
        Err(e) => super::revoke::unavailable(e),
    }
}

/// The issuers of this toolgate's tokens: its `jwt` credentials' and its delegations'.
fn issuers(config: &Config) -> Vec<&str> {
    let minted = config.credentials.values().filter_map(|c| match c {
        CredentialSpec::Jwt(j) => Some(j.issuer.as_str()),
        _ => None,
    });
    minted
        .chain(config.delegation.as_ref().map(|d| d.issuer.as_str()))
        .collect()
}

/// What introspection says about `token` at `now`.
pub fn answer(gw: &Gateway, token: &str, now: SystemTime) -> Result<Json, StateUnavailable> {
    let inactive = json!({ "active": false });
    let Some(keys) = gw.keys.key_set() else {
        return Ok(inactive);
    };
    let Some(first) = keys.algorithms().first().copied() else {
        return Ok(inactive);
    };
    let mut validation = Validation::new(first);
    validation.algorithms = keys.algorithms();
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    let Ok(claims) = keys.verify(token, &validation) else {
        return Ok(inactive);
    };
    let snapshot = gw.snapshot();
    let text = |name: &str| claims.get(name).and_then(Json::as_str).unwrap_or_default();
    if !issuers(&snapshot.config).contains(&text("iss")) {
        return Ok(inactive);
    }
    let state = &gw.state;
    let dead = (!text("jti").is_empty() && state.is_revoked(Kind::Jti, text("jti"), now)?)
        || state.is_revoked(Kind::Agent, text("sub"), now)?
        || (!text("task").is_empty()
            && (state.is_revoked(Kind::Task, text("task"), now)?
                || state.ended(text("task"), now)?.is_some()));
    if dead {
        return Ok(inactive);
    }
    let mut out = Map::new();
    out.insert("active".into(), Json::Bool(true));
    out.insert("token_type".into(), json!("Bearer"));
    out.extend(claims);
    Ok(Json::Object(out))
}

/// `GET /v1/revocations/feed`: what is dead now.
pub(super) fn feed(call: &Call<'_>) -> Reply {
    let now = SystemTime::now();
    let state = &call.gw.state;
    let (ended, revocations) = match (state.ended_tasks(now), state.revocations(now)) {
        (Ok(e), Ok(r)) => (e, r),
        (Err(e), _) | (_, Err(e)) => return super::revoke::unavailable(e),
    };
    let mut tasks: Vec<&str> = ended.iter().map(|e| e.id.as_str()).collect();
    let mut agents: Vec<&str> = Vec::new();
    for r in &revocations {
        match r.kind {
            Kind::Task => tasks.push(&r.id),
            Kind::Agent => agents.push(&r.id),
            Kind::Jti => {}
        }
    }
    let (credentials, truncated) = state.issued_for(&tasks, &agents, now);
    let complete = !truncated && credentials.len() <= MAX_FEED_CREDENTIALS;
    let credentials: Vec<Json> = credentials
        .into_iter()
        .take(MAX_FEED_CREDENTIALS)
        .map(|(task, c)| {
            json!({
                "jti": c.jti,
                "task": task,
                "kind": c.kind,
                "credential": c.credential,
                "agent": c.agent,
                "expires": rfc3339(c.exp),
            })
        })
        .collect();
    json_reply(
        StatusCode::OK,
        &json!({
            "generated_at": rfc3339(toolgate_policy::delegation::secs(now)),
            "ended_tasks": ended,
            "revocations": revocations,
            "credentials": credentials,
            "credentials_complete": complete,
        }),
    )
}
