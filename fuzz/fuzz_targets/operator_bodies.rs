//! operator_bodies: arbitrary bytes as the body of `POST /v1/revoke`, through what the
//! endpoint runs (proxy/src/operator/revoke.rs): `state::parse_request` with the configured
//! lifetimes, then `State::revoke` on the memory backend — with the default lifetimes (24h,
//! at most 30d) and with the longest a config allows (at most 3650d).
//!
//! Input: the body (the endpoint reads at most 4 KiB). Besides "no panic": an accepted
//! request names a valid id and a lifetime within bounds; applying it revokes exactly that
//! id of that kind, until an expiry at least the ttl away that reads back from its RFC 3339
//! form; and a later, shorter revocation of the same id never shortens it.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use toolgate_policy::config::LONGEST_REVOCATION_TTL;
use toolgate_policy::state::{self, Kind, Lifetimes, Revocation, State, MIN_TTL};

/// A fixed "now" (2027-01-15), so a run is reproducible.
const NOW: u64 = 1_800_000_000;

fuzz_target!(|body: &[u8]| {
    let admin = &toolgate_fuzz::quickstart().admin;
    let configured = Lifetimes {
        default: admin.revocation_ttl,
        max: admin.max_revocation_ttl,
    };
    let longest = Lifetimes {
        default: Duration::from_secs(3600),
        max: LONGEST_REVOCATION_TTL,
    };
    for lifetimes in [configured, longest] {
        match state::parse_request(body, lifetimes) {
            Ok(r) => apply(&r, lifetimes),
            Err(e) => assert!(!e.to_string().is_empty(), "a refusal without a reason"),
        }
    }
});

fn apply(r: &Revocation, lifetimes: Lifetimes) {
    assert!(state::valid_id(&r.id), "accepted id {:?}", r.id);
    assert!(
        (MIN_TTL..=lifetimes.max).contains(&r.ttl),
        "accepted ttl {:?} outside {MIN_TTL:?}..={:?}",
        r.ttl,
        lifetimes.max
    );
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let state = State::in_memory();
    let added = match state.revoke(r, now) {
        Ok(a) => a,
        Err(e) => panic!("revoking {r:?} in an empty memory state failed: {e}"),
    };
    assert!(added.changed, "a first revocation changed nothing");
    assert_eq!(
        (added.entry.kind, added.entry.id.as_str()),
        (r.kind, r.id.as_str())
    );
    // Read back with humantime directly, not with the state module's own parser.
    let expires = match humantime::parse_rfc3339(&added.entry.expires) {
        Ok(t) => t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        Err(e) => panic!("expiry {:?} does not read back: {e}", added.entry.expires),
    };
    assert!(
        expires >= NOW + r.ttl.as_secs() && expires <= NOW + r.ttl.as_secs() + 1,
        "expiry {expires} for ttl {:?} from {NOW}",
        r.ttl
    );
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    let revoked = |kind: Kind, when: SystemTime| match state.is_revoked(kind, &r.id, when) {
        Ok(b) => b,
        Err(e) => panic!("state unavailable: {e}"),
    };
    assert!(revoked(r.kind, now), "not revoked once revoked");
    assert!(revoked(r.kind, at(expires - 1)), "revocation ended early");
    assert!(
        !revoked(r.kind, at(expires)),
        "revocation outlived its expiry"
    );
    for other in Kind::ALL.into_iter().filter(|k| *k != r.kind) {
        assert!(
            !revoked(other, now),
            "revoking a {:?} revoked a {other:?}",
            r.kind
        );
    }
    let listed = match state.revocations(now) {
        Ok(l) => l,
        Err(e) => panic!("state unavailable: {e}"),
    };
    assert_eq!(
        listed,
        vec![added.entry.clone()],
        "the list of revocations in force"
    );
    // A revocation only lengthens: the same id, later, for the shortest ttl, keeps the end.
    let shorter = Revocation {
        ttl: MIN_TTL,
        ..r.clone()
    };
    match state.revoke(&shorter, at(NOW + 1)) {
        Ok(again) if r.ttl > MIN_TTL + Duration::from_secs(1) => {
            assert!(
                !again.changed,
                "a shorter revocation changed the one in force"
            );
            assert_eq!(again.entry.expires, added.entry.expires);
        }
        Ok(_) => {}
        Err(e) => panic!("revoking again failed: {e}"),
    }
    assert!(
        revoked(r.kind, at(expires - 1)),
        "a shorter revocation shortened it"
    );
}
