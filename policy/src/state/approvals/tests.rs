#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Map;

use super::*;
use crate::approval::{body_hash, Shown, Verdict};
use crate::config::{StateBackend, StateSettings};
use crate::state::State;

const NOW: u64 = 1_800_000_000;
const BOUNDS: Bounds = Bounds {
    capacity: 10,
    retention: Duration::from_secs(3600),
};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn request(n: u32, ttl: Duration) -> NewApproval {
    let digest = body_hash(format!("request {n}").as_bytes());
    NewApproval {
        digest,
        head: body_hash(format!("head {n}").as_bytes()),
        agent: "spiffe://t/agent".into(),
        task: "T-1".into(),
        task_verified: false,
        action: "payment.create".into(),
        tool: Some("payments".into()),
        attributes: Map::new(),
        request: Shown {
            method: "POST".into(),
            scheme: "http".into(),
            host: "payments.test".into(),
            port: 80,
            path: "/v1/payments".into(),
            query: Some(format!("amount={n}")),
            headers: BTreeMap::new(),
            headers_truncated: false,
            body: None,
        },
        reason: "over the limit".into(),
        approvers: vec!["group:leads".into()],
        decision_id: format!("d-{n}"),
        trace_id: "t".into(),
        ttl,
    }
}

fn verdict(who: &str, comment: Option<&str>) -> Verdict {
    Verdict {
        approver: who.into(),
        comment: comment.map(str::to_string),
    }
}

const TEN_MIN: Duration = Duration::from_secs(600);

#[test]
fn an_approval_is_used_exactly_once_and_the_next_identical_request_asks_again() {
    let state = State::in_memory();
    let new = request(1, TEN_MIN);
    let digest = new.digest;
    let held = state.hold(new.clone(), BOUNDS, at(NOW)).unwrap().value;
    assert!(held.created);
    assert_eq!(held.approval.status, Status::Pending);
    assert!(valid_approval_id(&held.approval.id), "{}", held.approval.id);
    let id = held.approval.id.clone();

    // Held again before a human decides: the same approval, not a second one.
    let again = state.hold(new.clone(), BOUNDS, at(NOW + 5)).unwrap().value;
    assert!(!again.created);
    assert_eq!(again.approval.id, id);
    assert!(!state.any_approved());
    assert_eq!(state.approved(&digest, at(NOW + 5)).unwrap(), None);

    let approved = state
        .decide(
            &id,
            true,
            &verdict("alice", Some("ok")),
            BOUNDS,
            at(NOW + 60),
        )
        .unwrap()
        .value;
    assert_eq!(approved.status, Status::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("alice"));
    assert!(state.any_approved());
    assert!(state.approved_head(&new.head).unwrap());
    let found = state.approved(&digest, at(NOW + 61)).unwrap().unwrap();
    let granted = found.granted();
    assert_eq!(
        (granted.id.as_str(), granted.approved_by.as_str()),
        (id.as_str(), "alice")
    );
    assert_eq!(granted.comment.as_deref(), Some("ok"));

    // Used once: a second consume (a concurrent identical retry) gets nothing.
    let used = state
        .consume(&id, "d-retry", at(NOW + 62))
        .unwrap()
        .value
        .unwrap();
    assert_eq!(used.status, Status::Consumed);
    assert_eq!(used.consumed_by.as_deref(), Some("d-retry"));
    assert_eq!(
        state.consume(&id, "d-retry-2", at(NOW + 62)).unwrap().value,
        None
    );
    assert!(!state.any_approved());
    assert_eq!(state.approved(&digest, at(NOW + 63)).unwrap(), None);

    // The identical request afterwards is held anew, under a new id.
    let next = state.hold(new, BOUNDS, at(NOW + 64)).unwrap().value;
    assert!(next.created);
    assert_ne!(next.approval.id, id);
    // The used one is still shown while it is kept.
    let shown = state.get(&id, BOUNDS, at(NOW + 64)).unwrap().unwrap();
    assert_eq!(shown.status, Status::Consumed);

    let events: Vec<&str> = state
        .take_events()
        .iter()
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(events, ["requested", "approved", "consumed", "requested"]);
}

#[test]
fn a_denial_sticks_for_the_retention_then_a_human_is_asked_again() {
    let state = State::in_memory();
    let new = request(2, TEN_MIN);
    let id = state
        .hold(new.clone(), BOUNDS, at(NOW))
        .unwrap()
        .value
        .approval
        .id;
    let denied = state
        .decide(
            &id,
            false,
            &verdict("bob", Some("not this vendor")),
            BOUNDS,
            at(NOW + 30),
        )
        .unwrap()
        .value;
    assert_eq!(denied.status, Status::Denied);
    // Deciding again is refused either way.
    for approve in [true, false] {
        let e = state
            .decide(
                &id,
                approve,
                &verdict("mallory", None),
                BOUNDS,
                at(NOW + 31),
            )
            .unwrap_err();
        assert_eq!(
            e,
            ApprovalError::NotPending {
                id: id.clone(),
                status: Status::Denied
            }
        );
    }
    let retried = state.hold(new.clone(), BOUNDS, at(NOW + 40)).unwrap().value;
    assert!(!retried.created);
    assert_eq!(retried.approval.status, Status::Denied);
    assert_eq!(retried.approval.comment.as_deref(), Some("not this vendor"));
    assert!(state.list(BOUNDS, at(NOW + 40)).unwrap().is_empty());
    // After the retention the denial is forgotten.
    let later = NOW + 30 + BOUNDS.retention.as_secs();
    let fresh = state.hold(new, BOUNDS, at(later)).unwrap().value;
    assert!(fresh.created);
    assert_eq!(fresh.approval.status, Status::Pending);
    assert_eq!(state.get(&id, BOUNDS, at(later)).unwrap(), None);
    let e = state
        .decide(&id, true, &verdict("alice", None), BOUNDS, at(later))
        .unwrap_err();
    assert_eq!(e, ApprovalError::NotFound(id));
}

#[test]
fn pending_and_approved_approvals_expire_at_their_ttl() {
    let state = State::in_memory();
    let ttl = Duration::from_secs(2);
    let pending = request(3, ttl);
    let approved = request(4, ttl);
    let p = state
        .hold(pending.clone(), BOUNDS, at(NOW))
        .unwrap()
        .value
        .approval
        .id;
    let a = state
        .hold(approved.clone(), BOUNDS, at(NOW))
        .unwrap()
        .value
        .approval
        .id;
    state
        .decide(&a, true, &verdict("alice", None), BOUNDS, at(NOW + 1))
        .unwrap();
    assert!(state
        .approved(&approved.digest, at(NOW + 1))
        .unwrap()
        .is_some());
    // At the expiry instant neither may be used or decided.
    assert_eq!(state.approved(&approved.digest, at(NOW + 2)).unwrap(), None);
    assert_eq!(state.consume(&a, "d", at(NOW + 2)).unwrap().value, None);
    let e = state
        .decide(&p, true, &verdict("alice", None), BOUNDS, at(NOW + 2))
        .unwrap_err();
    assert!(
        matches!(
            e,
            ApprovalError::NotPending {
                status: Status::Expired,
                ..
            }
        ),
        "{e:?}"
    );
    for new in [pending, approved] {
        let held = state.hold(new, BOUNDS, at(NOW + 3)).unwrap().value;
        assert_eq!(
            (held.created, held.approval.status),
            (false, Status::Expired)
        );
    }
    assert!(!state.any_approved());
    let expired = state
        .take_events()
        .into_iter()
        .filter(|e| e.kind == EventKind::Expired)
        .count();
    assert_eq!(expired, 2);
}

#[test]
fn a_full_room_refuses_new_approvals_and_never_evicts_one_in_force() {
    let state = State::in_memory();
    let bounds = Bounds {
        capacity: 50,
        retention: Duration::from_secs(60),
    };
    let mut ids = Vec::new();
    for n in 0..50 {
        let held = state
            .hold(request(n, TEN_MIN), bounds, at(NOW))
            .unwrap()
            .value;
        ids.push(held.approval.id);
    }
    // Every id distinct and unguessable-shaped.
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 50);
    let e = state
        .hold(request(99, TEN_MIN), bounds, at(NOW + 1))
        .unwrap_err();
    assert_eq!(e, ApprovalError::Full(Full { capacity: 50 }));
    assert!(e.to_string().contains("none is evicted"), "{e}");
    // Approving one does not free room: approved approvals are in force too.
    state
        .decide(&ids[0], true, &verdict("a", None), bounds, at(NOW + 1))
        .unwrap();
    assert!(state
        .hold(request(99, TEN_MIN), bounds, at(NOW + 1))
        .is_err());
    assert_eq!(state.list(bounds, at(NOW + 1)).unwrap().len(), 50);
    // A denial does.
    state
        .decide(&ids[1], false, &verdict("a", None), bounds, at(NOW + 2))
        .unwrap();
    assert!(
        state
            .hold(request(99, TEN_MIN), bounds, at(NOW + 2))
            .unwrap()
            .value
            .created
    );
    // So does expiry.
    let later = NOW + TEN_MIN.as_secs();
    assert!(
        state
            .hold(request(100, TEN_MIN), bounds, at(later))
            .unwrap()
            .value
            .created
    );
}

#[test]
fn ended_approvals_are_kept_within_their_own_bound() {
    let mut set = Approvals::default();
    let bounds = Bounds {
        capacity: 5,
        retention: Duration::from_secs(86_400),
    };
    let now = NOW * 1000;
    for n in 0..12 {
        let id = set
            .hold(request(n, TEN_MIN), bounds, now + u64::from(n))
            .unwrap()
            .approval
            .id;
        set.decide(&id, false, &verdict("a", None), bounds, now + u64::from(n))
            .unwrap();
    }
    set.refresh(bounds, now + 20);
    assert_eq!(set.held(), 5);
    assert_eq!(set.in_force(), 0);
    // The newest five are kept.
    let kept: Vec<String> = set
        .snapshot()
        .iter()
        .map(|a| a.request.query.clone().unwrap())
        .collect();
    assert_eq!(
        kept,
        ["amount=7", "amount=8", "amount=9", "amount=10", "amount=11"]
    );
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "toolgate-approvals-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn settings(&self) -> StateSettings {
        StateSettings {
            backend: StateBackend::Memory,
            dir: Some(self.0.clone()),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn approvals_survive_a_restart_and_what_expired_meanwhile_ends() {
    let dir = TempDir::new();
    let approved = request(1, TEN_MIN);
    let pending = request(2, Duration::from_secs(30));
    let used = request(3, TEN_MIN);
    {
        let state = State::open(&dir.settings(), at(NOW)).unwrap();
        let a = state.hold(approved.clone(), BOUNDS, at(NOW)).unwrap();
        assert_eq!(a.unsaved, None);
        state
            .decide(
                &a.value.approval.id,
                true,
                &verdict("alice", Some("ok")),
                BOUNDS,
                at(NOW + 1),
            )
            .unwrap();
        state.hold(pending.clone(), BOUNDS, at(NOW)).unwrap();
        let u = state
            .hold(used.clone(), BOUNDS, at(NOW))
            .unwrap()
            .value
            .approval
            .id;
        state
            .decide(&u, true, &verdict("alice", None), BOUNDS, at(NOW + 1))
            .unwrap();
        state.consume(&u, "d-used", at(NOW + 2)).unwrap();
    }
    let text = std::fs::read_to_string(dir.0.join("state.json")).unwrap();
    assert!(text.contains("\"approvals\""), "{text}");
    assert!(!text.contains("secret"), "{text}");

    // A minute later: the approved one is still usable, once; the 30 s one expired while
    // toolgate was down; the used one stays used.
    let state = State::open(&dir.settings(), at(NOW + 60)).unwrap();
    assert!(state.any_approved());
    let found = state
        .approved(&approved.digest, at(NOW + 60))
        .unwrap()
        .unwrap();
    assert_eq!(found.comment.as_deref(), Some("ok"));
    let held = state.hold(pending, BOUNDS, at(NOW + 60)).unwrap().value;
    assert_eq!(
        (held.created, held.approval.status),
        (false, Status::Expired)
    );
    assert_eq!(state.approved(&used.digest, at(NOW + 60)).unwrap(), None);
    let again = state.hold(used, BOUNDS, at(NOW + 60)).unwrap().value;
    assert!(
        again.created,
        "a consumed approval must not be reused after a restart"
    );
    state
        .consume(&found.id, "d-1", at(NOW + 61))
        .unwrap()
        .value
        .unwrap();

    // Used before the next restart: still used after it.
    let state = State::open(&dir.settings(), at(NOW + 62)).unwrap();
    assert_eq!(
        state.approved(&approved.digest, at(NOW + 62)).unwrap(),
        None
    );
    assert!(!state.any_approved());
}

#[test]
fn a_state_file_with_a_bad_approval_refuses_the_start() {
    let dir = TempDir::new();
    {
        let state = State::open(&dir.settings(), at(NOW)).unwrap();
        let id = state
            .hold(request(1, TEN_MIN), BOUNDS, at(NOW))
            .unwrap()
            .value
            .approval
            .id;
        state
            .decide(&id, true, &verdict("alice", None), BOUNDS, at(NOW))
            .unwrap();
    }
    let path = dir.0.join("state.json");
    let good = std::fs::read_to_string(&path).unwrap();
    for (from, to, says) in [
        (
            "\"status\": \"approved\"",
            "\"status\": \"blessed\"",
            "unknown variant `blessed`",
        ),
        (
            "\"decided_by\": \"alice\"",
            "\"decided_by\": null",
            "approvals[0]: a approved approval needs decided_by",
        ),
        (
            "\"task\": \"T-1\"",
            "\"task\": \"T-1\", \"extra\": 1",
            "unknown field `extra`",
        ),
    ] {
        assert!(good.contains(from), "{from} not in {good}");
        std::fs::write(&path, good.replace(from, to)).unwrap();
        let e = State::open(&dir.settings(), at(NOW))
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{to}: {e}");
        assert!(e.contains("Move the file aside"), "{e}");
    }
    let id_line = good.lines().find(|l| l.contains("\"id\"")).unwrap();
    std::fs::write(
        &path,
        good.replace(id_line, "      \"id\": \"guessable-1\","),
    )
    .unwrap();
    let e = State::open(&dir.settings(), at(NOW))
        .unwrap_err()
        .to_string();
    assert!(e.contains("approvals[0]: id is not an approval id"), "{e}");
}

#[test]
fn approval_ids_are_lower_case_uuids_v4() {
    let ids: HashSet<String> = (0..1000).map(|_| new_id()).collect();
    assert_eq!(ids.len(), 1000);
    for id in &ids {
        assert!(valid_approval_id(id), "{id}");
        assert_eq!(id.as_bytes()[14], b'4', "{id}");
    }
    for bad in [
        "",
        "x",
        "../../etc/passwd",
        &"A".repeat(36),
        "0123456789abcdef0123456789abcdef0123",
    ] {
        assert!(!valid_approval_id(bad), "{bad}");
    }
}
