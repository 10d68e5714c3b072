#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use toolgate_policy::approval::Ask;
use toolgate_policy::state::Status;

use super::{Note, Pending};
use crate::problem::{self, Refusal};

fn note(status: Status) -> Note {
    Note {
        id: "8994287e-2e08-4baf-b433-13e7ca9fe9dc".into(),
        status,
        expires_at: "2026-12-02T10:10:00.000Z".into(),
        approve_url: "http://127.0.0.1:15000/approvals#8994287e-2e08-4baf-b433-13e7ca9fe9dc".into(),
        decided_by: (status != Status::Pending).then(|| "bob".to_string()),
        comment: (status == Status::Denied).then(|| "not this vendor".to_string()),
    }
}

fn pending(status: Status) -> Box<Pending> {
    Box::new(Pending {
        reason: "payment of 500 needs a human".into(),
        ask: Ask::default(),
        note: Some(note(status)),
    })
}

#[test]
fn every_approval_refusal_has_its_problem_and_carries_the_approval() {
    for (refusal, status, kind, says) in [
        (
            Refusal::ApprovalRequired(pending(Status::Pending)),
            403,
            "approval-required",
            "waiting for a human to approve it at http://127.0.0.1:15000/approvals#",
        ),
        (
            Refusal::ApprovalDenied(pending(Status::Denied)),
            403,
            "approval-denied",
            "denied by bob (not this vendor)",
        ),
        (
            Refusal::ApprovalExpired(pending(Status::Expired)),
            403,
            "approval-expired",
            "expired at 2026-12-02T10:10:00.000Z",
        ),
        (
            Refusal::ApprovalUsed(pending(Status::Consumed)),
            409,
            "approval-used",
            "used a moment ago",
        ),
    ] {
        let p = problem::problem(&refusal);
        assert_eq!((p.status, p.kind), (status, kind));
        assert!(
            p.detail.starts_with("payment of 500 needs a human: "),
            "{}",
            p.detail
        );
        assert!(p.detail.contains(says), "{}", p.detail);
        let extra = problem::extensions(&refusal);
        assert_eq!(extra["approval_id"], "8994287e-2e08-4baf-b433-13e7ca9fe9dc");
        assert!(extra["approve_url"]
            .as_str()
            .unwrap()
            .ends_with("#8994287e-2e08-4baf-b433-13e7ca9fe9dc"));
        assert_eq!(extra["expires_at"], "2026-12-02T10:10:00.000Z");
    }
    let denied = problem::extensions(&Refusal::ApprovalDenied(pending(Status::Denied)));
    assert_eq!(
        (denied["decided_by"].as_str(), denied["comment"].as_str()),
        (Some("bob"), Some("not this vendor"))
    );
    // Other refusals add nothing.
    assert!(problem::extensions(&Refusal::Denied("no".into())).is_empty());
    let full = Refusal::ApprovalsFull(toolgate_policy::state::approvals::Full { capacity: 1000 });
    assert_eq!(problem::problem(&full).status, 503);
    assert_eq!(problem::problem(&Refusal::ApprovalBody(65536)).status, 413);
    assert_eq!(
        problem::problem(&Refusal::ApprovalInBatch("r".into())).kind,
        "approval-batch"
    );
}

#[test]
fn the_decision_log_object_names_the_approval_without_its_page() {
    let log = note(Status::Consumed).log();
    assert_eq!(log["id"], "8994287e-2e08-4baf-b433-13e7ca9fe9dc");
    assert_eq!(log["status"], "consumed");
    assert_eq!(log["decided_by"], "bob");
    assert!(log.get("approve_url").is_none());
}

#[test]
fn the_page_allows_only_its_own_script_and_style() {
    let csp = &*super::page::CSP;
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(
        csp.contains("style-src 'sha256-") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    // No asset from anywhere else, no data.
    assert!(
        !super::page::HTML.contains("src=\"http"),
        "an external asset"
    );
    assert!(
        !super::page::HTML.contains("innerHTML"),
        "data must be written as text"
    );
}
