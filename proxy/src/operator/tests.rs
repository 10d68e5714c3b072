#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::StatusCode;
use toolgate_policy::config::SecretText;
use toolgate_policy::state::StateUnavailable;

use super::auth::{check, Failure, Listener};
use super::problem;
use crate::problem::Refusal;

const TOKEN: &str = "5f0c3a9e1b7d2468ace0f13579bdf02468ace13579bdf0";

fn checked(values: &[&[u8]]) -> Result<(), Failure> {
    check(values.iter().copied(), &SecretText::new(TOKEN))
}

#[test]
fn only_one_bearer_header_with_the_exact_token_passes() {
    let good = format!("Bearer {TOKEN}");
    assert_eq!(checked(&[good.as_bytes()]), Ok(()));
    // The scheme is case-insensitive (RFC 9110); extra spaces around the token are not part
    // of it.
    assert_eq!(checked(&[format!("bearer  {TOKEN} ").as_bytes()]), Ok(()));
    assert_eq!(checked(&[format!("BEARER {TOKEN}").as_bytes()]), Ok(()));

    assert_eq!(checked(&[]), Err(Failure::Missing));
    assert_eq!(
        checked(&[good.as_bytes(), good.as_bytes()]),
        Err(Failure::Repeated)
    );
    for not_bearer in [
        TOKEN.to_string(),
        format!("Basic {TOKEN}"),
        format!("Bearer-{TOKEN}"),
        String::new(),
    ] {
        assert_eq!(
            checked(&[not_bearer.as_bytes()]),
            Err(Failure::NotBearer),
            "{not_bearer}"
        );
    }
    let prefix = &TOKEN[..TOKEN.len() - 1];
    let wrong_case = TOKEN.to_uppercase();
    for wrong in [
        "Bearer ".to_string(),
        format!("Bearer {prefix}"),
        format!("Bearer {TOKEN}0"),
        format!("Bearer {wrong_case}"),
        format!("Bearer {TOKEN} {TOKEN}"),
    ] {
        assert_eq!(checked(&[wrong.as_bytes()]), Err(Failure::Wrong), "{wrong}");
    }
    // Not UTF-8: refused, not a panic.
    assert_eq!(checked(&[b"Bearer \xff\xfe"]), Err(Failure::Wrong));
}

#[test]
fn listeners_are_labelled_for_metrics() {
    assert_eq!(Listener::Admin.label(), "admin");
    assert_eq!(Listener::Socket.label(), "socket");
}

#[test]
fn problems_carry_the_type_status_and_detail() {
    let reply = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "revocations-full",
        "revocations full",
        "10000 jti revocations".into(),
    );
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.content_type, "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["type"], "urn:toolgate:problem:revocations-full");
    assert_eq!(body["status"], 503);
    assert_eq!(body["detail"], "10000 jti revocations");
}

#[test]
fn unreadable_state_refuses_the_request_with_a_503() {
    let p = crate::problem::problem(&Refusal::from(StateUnavailable));
    assert_eq!((p.status, p.kind), (503, "state-unavailable"));
    assert!(p.detail.contains("restart toolgate"), "{}", p.detail);
}
