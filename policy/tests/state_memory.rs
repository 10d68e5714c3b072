//! The revocation set's memory bound, measured with a counting allocator: every kind's room
//! filled past its capacity with the longest ids allowed never holds more heap than
//! `state::worst_case_bytes` documents. One test in this binary, so nothing else allocates
//! while it measures.
#![allow(
    unsafe_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/counting.rs"]
mod counting;

use std::time::{Duration, SystemTime};

use toolgate_policy::state::{self, Kind, Lifetimes, RevokeError, State, CAPACITY, MAX_ID};

use counting::live;

#[test]
fn full_revocation_rooms_stay_within_the_documented_worst_case() {
    let bound = state::worst_case_bytes() as isize;
    let lifetimes = Lifetimes {
        default: Duration::from_secs(3600),
        max: Duration::from_secs(30 * 86_400),
    };
    let now = SystemTime::now();
    let before = live();
    let state = State::in_memory();
    let mut refused = 0;
    for kind in Kind::ALL {
        for i in 0..CAPACITY + 100 {
            // The longest id allowed, through the operator's request parser.
            let id = format!("{i:0>width$}", width = MAX_ID);
            let body = format!("{{\"{}\": \"{id}\", \"ttl\": \"30d\"}}", kind.as_str());
            let r = state::parse_request(body.as_bytes(), lifetimes).unwrap();
            match state.revoke(&r, now) {
                Ok(added) => assert!(added.changed),
                Err(RevokeError::Refused(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(
        refused, 300,
        "each room refuses what is beyond its capacity"
    );
    let held = live() - before;
    assert!(
        held <= bound,
        "full rooms hold {held} bytes, over the documented {bound}"
    );
    println!("revocations: 3 × {CAPACITY} held in {held} bytes, bound {bound}");
    drop(state);
    assert!(live() - before < 64 * 1024, "memory not released on drop");
}
