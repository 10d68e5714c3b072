#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::json;
use toolgate_policy::delegation::{GrantError, RequestError};
use toolgate_policy::state::EndedTask;

use crate::problem::{extensions, problem, Refusal};

#[test]
fn every_delegation_and_end_refusal_maps_to_its_problem() {
    let ended = Refusal::TaskEnded(Box::new(EndedTask {
        id: "T-1".into(),
        at: "2026-12-02T10:00:00Z".into(),
        by: "orchestrator".into(),
        reason: Some("done".into()),
        until: "2026-12-03T10:00:00Z".into(),
    }));
    let p = problem(&ended);
    assert_eq!(
        (p.status, p.kind, p.title),
        (403, "task-ended", "task ended")
    );
    assert_eq!(
        p.detail,
        "task T-1 ended at 2026-12-02T10:00:00Z (by orchestrator): nothing more is done under it"
    );
    assert_eq!(
        serde_json::Value::Object(extensions(&ended)),
        json!({"task": "T-1", "ended_at": "2026-12-02T10:00:00Z", "ended_by": "orchestrator"})
    );
    let scope = Refusal::DelegationScope {
        action: "ticket.transition".into(),
        delegated: vec!["ticket.read".into(), "repo.read".into()],
    };
    let p = problem(&scope);
    assert_eq!((p.status, p.kind), (403, "delegation-scope"));
    assert_eq!(
        p.detail,
        "action ticket.transition is outside this task's delegation, which allows only ticket.read, repo.read"
    );
    assert_eq!(
        extensions(&scope)["delegated_actions"],
        json!(["ticket.read", "repo.read"])
    );
    for (refusal, status, kind) in [
        (
            Refusal::from(RequestError::NoActions),
            400,
            "delegation-request",
        ),
        (Refusal::from(GrantError::ToSelf), 400, "delegation-request"),
        (
            Refusal::from(GrantError::TooDeep(4)),
            403,
            "delegation-scope",
        ),
        (
            Refusal::from(GrantError::TooLong(9000)),
            403,
            "delegation-scope",
        ),
        (
            Refusal::from(GrantError::NothingHeld("x".into())),
            403,
            "delegation-scope",
        ),
        (Refusal::DelegationOff, 403, "delegation-off"),
    ] {
        let p = problem(&refusal);
        assert_eq!((p.status, p.kind), (status, kind), "{refusal}");
    }
}
