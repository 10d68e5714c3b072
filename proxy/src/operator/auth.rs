//! Who may call the operator API: the bearer token on every listener where one is configured,
//! the filesystem on the operator socket, and nobody on the admin listener without a token.

use http::StatusCode;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};
use toolgate_policy::config::SecretText;

use super::problem;
use crate::admin::Reply;
use crate::gateway::Gateway;

/// The listener a request arrived on. Fixed per listening service, never inferred from the
/// peer's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The admin TCP listener (`listen.admin`): reachable by the agent.
    Admin,
    /// The operator unix socket (`listen.operator`).
    Socket,
}

impl Listener {
    /// The `listener` label of metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Listener::Admin => "admin",
            Listener::Socket => "socket",
        }
    }
}

/// Why a presented credential was refused (logged; the token itself never is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Missing,
    Repeated,
    NotBearer,
    Wrong,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "no Authorization header",
            Failure::Repeated => "more than one Authorization header",
            Failure::NotBearer => "the Authorization header is not a bearer token",
            Failure::Wrong => "the bearer token is not the operator token",
        }
    }
}

/// `Ok` when the request may use the operator API on `listener`; otherwise the answer.
pub(super) fn authenticate(
    gw: &Gateway,
    listener: Listener,
    session: &ServerSession,
) -> Result<(), Reply> {
    let snapshot = gw.snapshot();
    let token = snapshot.config.admin.token.as_ref();
    let Some(token) = token else {
        return match listener {
            // The socket's filesystem permissions are its authentication.
            Listener::Socket => Ok(()),
            Listener::Admin => Err(off(snapshot.config.listen.operator.is_some())),
        };
    };
    let headers = session
        .req_header()
        .headers
        .get_all(http::header::AUTHORIZATION);
    match check(headers.iter().map(|v| v.as_bytes()), token) {
        Ok(()) => Ok(()),
        Err(failure) => {
            gw.metrics.operator_auth_failure(listener.label());
            let peer = match session.client_addr() {
                Some(addr) if addr.as_inet().is_some() => addr.to_string(),
                Some(_) => "unix socket".to_string(),
                None => "unknown".to_string(),
            };
            let path = session.req_header().uri.path();
            tracing::warn!(
                target: "toolgate::operator",
                listener = listener.label(),
                %peer,
                method = %session.req_header().method,
                path = ?path.get(..path.len().min(128)).unwrap_or_default(),
                reason = failure.as_str(),
                "operator authentication failed"
            );
            Err(problem(
                StatusCode::UNAUTHORIZED,
                "operator-unauthorized",
                "operator authentication required",
                format!(
                    "{}: send Authorization: Bearer <the token in admin.token_file>",
                    failure.as_str()
                ),
            )
            .with_header(
                http::header::WWW_AUTHENTICATE,
                "Bearer realm=\"toolgate operator\"",
            ))
        }
    }
}

/// Check the `Authorization` header values presented against `token`: exactly one, of the
/// `Bearer` scheme (any case), with a token equal to the configured one.
pub(super) fn check<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
    token: &SecretText,
) -> Result<(), Failure> {
    let value = values.next().ok_or(Failure::Missing)?;
    if values.next().is_some() {
        return Err(Failure::Repeated);
    }
    let (scheme, given) = value
        .iter()
        .position(|b| *b == b' ')
        .map(|i| value.split_at(i))
        .ok_or(Failure::NotBearer)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Failure::NotBearer);
    }
    let given = given.trim_ascii();
    if same(given, token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(Failure::Wrong)
    }
}

/// Compare in constant time: digests of both, so neither the first difference nor the
/// length of the configured token shows in the time taken.
pub(super) fn same(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The answer while the operator API is off on the admin listener.
fn off(socket: bool) -> Reply {
    let detail = if socket {
        "the operator API is off on the admin listener because admin.token_file is not set: use the operator socket (listen.operator, e.g. `toolgate revoke -c FILE …`), or set admin.token_file to a file holding a random token"
    } else {
        "the operator API is off: set admin.token_file (a file holding a random token, sent as Authorization: Bearer) and/or listen.operator (unix:/path, a socket in a directory the agent cannot reach)"
    };
    problem(
        StatusCode::FORBIDDEN,
        "operator-off",
        "operator API off",
        detail.into(),
    )
}
