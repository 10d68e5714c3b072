//! No body sent to `POST /v1/approvals/{id}/approve|deny` can panic its handler: arbitrary
//! bytes and structured JSON built from what an attacker would try (every field, wrong
//! types, control characters, lengths at and past each bound) go through the same parse and
//! store decision the handler runs; whatever is accepted is bounded and decides exactly one
//! pending approval once.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use toolgate_policy::approval::{
    self, parse_verdict, Shown, MAX_APPROVER_BYTES, MAX_COMMENT_BYTES,
};
use toolgate_policy::state::{ApprovalError, ApprovalStore, Bounds, NewApproval, State, Status};

const BOUNDS: Bounds = Bounds {
    capacity: 4,
    retention: Duration::from_secs(60),
};

fn held(state: &State, now: SystemTime) -> String {
    let new = NewApproval {
        digest: approval::body_hash(b"r"),
        head: approval::body_hash(b"h"),
        agent: "a".into(),
        task: "T".into(),
        task_verified: false,
        action: "payment.create".into(),
        tool: None,
        attributes: Map::new(),
        request: Shown {
            method: "POST".into(),
            scheme: "http".into(),
            host: "h".into(),
            port: 80,
            path: "/".into(),
            query: None,
            headers: BTreeMap::new(),
            headers_truncated: false,
            body: None,
        },
        reason: "r".into(),
        approvers: Vec::new(),
        decision_id: "d".into(),
        trace_id: "t".into(),
        ttl: Duration::from_secs(600),
    };
    state.hold(new, BOUNDS, now).unwrap().value.approval.id
}

/// Parse `body` and, if accepted, decide a pending approval with it, twice.
fn parse_and_decide(body: &[u8], approve: bool) {
    let Ok(verdict) = parse_verdict(body) else {
        return;
    };
    assert!(!verdict.approver.is_empty() && verdict.approver.len() <= MAX_APPROVER_BYTES);
    assert!(
        !verdict.approver.chars().any(char::is_control),
        "{verdict:?}"
    );
    if let Some(c) = &verdict.comment {
        assert!(c.len() <= MAX_COMMENT_BYTES);
        assert!(!c
            .chars()
            .any(|ch| ch.is_control() && ch != '\n' && ch != '\t'));
    }
    let state = State::in_memory();
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let id = held(&state, now);
    let decided = state
        .decide(&id, approve, &verdict, BOUNDS, now)
        .unwrap()
        .value;
    let want = if approve {
        Status::Approved
    } else {
        Status::Denied
    };
    assert_eq!(decided.status, want);
    assert_eq!(
        decided.decided_by.as_deref(),
        Some(verdict.approver.as_str())
    );
    // Once only.
    let again = state
        .decide(&id, !approve, &verdict, BOUNDS, now)
        .unwrap_err();
    assert!(
        matches!(again, ApprovalError::NotPending { .. }),
        "{again:?}"
    );
}

fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[A-Za-z0-9@._ -]{0,40}".prop_map(Value::from),
        "\\PC{0,30}".prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        "[\\x00-\\x1f]{1,4}".prop_map(Value::from),
        (MAX_APPROVER_BYTES - 2..MAX_APPROVER_BYTES + 3).prop_map(|n| Value::from("a".repeat(n))),
        (MAX_COMMENT_BYTES - 2..MAX_COMMENT_BYTES + 3).prop_map(|n| Value::from("c".repeat(n))),
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        Just(json!(["alice"])),
        Just(json!({"name": "alice"})),
    ]
}

fn body() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("approver"),
        Just("comment"),
        Just("status"),
        Just("APPROVER")
    ];
    prop::collection::vec((field, text()), 0..4).prop_map(|fields| {
        Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_verdict_endpoint(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        approve in any::<bool>(),
    ) {
        parse_and_decide(&bytes, approve);
    }

    #[test]
    fn structured_verdicts_never_panic_and_what_is_accepted_is_bounded(
        body in body(),
        approve in any::<bool>(),
    ) {
        parse_and_decide(body.to_string().as_bytes(), approve);
    }
}

#[test]
fn the_generator_reaches_accepted_and_refused_verdicts() {
    use proptest::strategy::ValueTree as _;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = body();
    let (mut accepted, mut refused) = (0, std::collections::HashSet::new());
    for _ in 0..2000 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        match parse_verdict(body.to_string().as_bytes()) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused.insert(std::mem::discriminant(&e));
            }
        }
    }
    assert!(accepted >= 50, "only {accepted} of 2000 accepted");
    assert_eq!(
        refused.len(),
        3,
        "refused for {} reasons only",
        refused.len()
    );
}
