//! No request body can panic the revocation endpoint: arbitrary bytes and structured JSON
//! built from what an attacker would try (every field, durations at and past every bound,
//! wrong types, control characters, huge numbers) go through the same parse and apply the
//! `POST /v1/revoke` handler runs, at any clock reading; whatever is accepted is bounded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use serde_json::{json, Map, Value};
use toolgate_policy::state::{self, Kind, Lifetimes, Refused, RevokeError, State, MAX_ID, MIN_TTL};

const LIFETIMES: Lifetimes = Lifetimes {
    default: Duration::from_secs(86_400),
    max: Duration::from_secs(30 * 86_400),
};

/// Parse and apply `body` at `now`; check what holds for anything accepted.
fn parse_and_apply(body: &[u8], now: SystemTime) {
    let Ok(r) = state::parse_request(body, LIFETIMES) else {
        return;
    };
    assert!(r.ttl >= MIN_TTL && r.ttl <= LIFETIMES.max, "{r:?}");
    assert!(!r.id.is_empty() && r.id.len() <= MAX_ID, "{r:?}");
    assert!(!r.id.chars().any(char::is_control), "{r:?}");
    let state = State::in_memory();
    match state.revoke(&r, now) {
        Ok(added) => {
            assert!(added.changed);
            assert!(state.is_revoked(r.kind, &r.id, now).unwrap());
            let listed = state.revocations(now).unwrap();
            assert_eq!(listed.len(), 1);
            // A revoked task never lets the task through; other kinds never refuse it.
            let task_refused = state.revoked(&r.id, "another-agent", now).unwrap();
            assert_eq!(task_refused, r.kind == Kind::Task);
        }
        // Only a clock near the end of time can overflow; nothing else refuses one entry.
        Err(RevokeError::Refused(Refused::Overflow)) => {}
        Err(e) => panic!("{r:?} at {now:?}: {e}"),
    }
}

fn clock() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        4 => (1_700_000_000u64..1_900_000_000).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        1 => (0u64..(1 << 40)).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        1 => Just(UNIX_EPOCH + Duration::from_secs(253_402_300_799)),
    ]
}

/// Durations as an attacker writes them: valid, negative, huge, fractional, unit soup.
fn ttl() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[0-9]{1,3}(s|m|h|d|ms|w|y|months)".prop_map(Value::from),
        "-?[0-9]{0,25}(s|ms|ns|us|y|d|)".prop_map(Value::from),
        "[0-9]{1,3}(\\.[0-9]{1,3})?(s|m|h) ?[0-9]{0,2}(s|m)?".prop_map(Value::from),
        Just(json!("18446744073709551615s")),
        Just(json!("1000000000000y")),
        Just(json!("30d")),
        Just(json!("30d 1s")),
        Just(json!("")),
        "\\PC{0,12}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        Just(Value::Null),
        Just(json!(["1h"])),
    ]
}

fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[A-Za-z0-9:/._-]{1,40}".prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
        (500usize..520).prop_map(|n| Value::from("x".repeat(n))),
        Just(Value::Null),
        any::<u64>().prop_map(Value::from),
        Just(json!({"task": "T"})),
    ]
}

fn body() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("task"),
        Just("agent"),
        Just("jti"),
        Just("ttl"),
        Just("until"),
        Just("TASK")
    ];
    let entry = (field, any::<bool>(), id(), ttl()).prop_map(|(k, as_ttl, id, ttl)| {
        let v = if k == "ttl" || as_ttl && k == "until" {
            ttl
        } else {
            id
        };
        (k.to_string(), v)
    });
    prop::collection::vec(entry, 0..4).prop_map(|fields| {
        let map: Map<String, Value> = fields.into_iter().collect();
        Value::Object(map)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_revocation_endpoint(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        now in clock(),
    ) {
        parse_and_apply(&bytes, now);
    }

    #[test]
    fn structured_json_never_panics_and_what_is_accepted_is_bounded(
        body in body(),
        now in clock(),
    ) {
        parse_and_apply(body.to_string().as_bytes(), now);
    }
}

#[test]
fn the_generator_reaches_accepted_and_refused_requests() {
    // Positive control for the properties above: the structured bodies are accepted often
    // enough for "what is accepted is bounded" to be exercised, and refused for many reasons.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = body();
    let (mut accepted, mut refused) = (0, std::collections::HashSet::new());
    for _ in 0..2000 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        match state::parse_request(body.to_string().as_bytes(), LIFETIMES) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused.insert(std::mem::discriminant(&e));
            }
        }
    }
    assert!(accepted >= 50, "only {accepted} of 2000 accepted");
    assert!(
        refused.len() >= 5,
        "refused for {} reasons only",
        refused.len()
    );
    let r = state::parse_request(br#"{"task": "T-1", "ttl": "1h"}"#, LIFETIMES).unwrap();
    assert_eq!(r.ttl, Duration::from_secs(3600));
}
