#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::config::{StateBackend, StateSettings};

const HOUR: Duration = Duration::from_secs(3600);
const LIFETIMES: Lifetimes = Lifetimes {
    default: Duration::from_secs(86_400),
    max: Duration::from_secs(30 * 86_400),
};

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "toolgate-state-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
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

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const NOW: u64 = 1_800_000_000;

fn revocation(kind: Kind, id: &str, ttl: Duration) -> Revocation {
    Revocation {
        kind,
        id: id.to_string(),
        ttl,
    }
}

#[test]
fn a_revocation_only_ever_gets_longer() {
    let state = State::in_memory();
    let long = state
        .revoke(&revocation(Kind::Task, "T-1", 2 * HOUR), at(NOW))
        .unwrap();
    assert!(long.changed);
    assert_eq!(long.entry.expires, rfc3339(NOW + 7200));

    // The agent tries to undo it with a short one: kept as it was.
    let short = state
        .revoke(
            &revocation(Kind::Task, "T-1", Duration::from_secs(1)),
            at(NOW + 10),
        )
        .unwrap();
    assert!(!short.changed);
    assert_eq!(short.entry.expires, rfc3339(NOW + 7200));
    assert!(state.revoked("T-1", "a", at(NOW + 3600)).unwrap());

    // A longer one lengthens it.
    let longer = state
        .revoke(&revocation(Kind::Task, "T-1", 3 * HOUR), at(NOW + 10))
        .unwrap();
    assert!(longer.changed);
    assert_eq!(longer.entry.expires, rfc3339(NOW + 10 + 10_800));
    assert!(state.revoked("T-1", "a", at(NOW + 7300)).unwrap());
    assert!(!state.revoked("T-1", "a", at(NOW + 10 + 10_800)).unwrap());
    // Positive control: other tasks and agents are not revoked.
    assert!(!state.revoked("T-2", "a", at(NOW)).unwrap());
}

#[test]
fn the_check_covers_the_task_and_the_agent_and_expiry_rounds_up() {
    let state = State::in_memory();
    state
        .revoke(&revocation(Kind::Agent, "spiffe://a", HOUR), at(NOW))
        .unwrap();
    assert!(state.revoked("any task", "spiffe://a", at(NOW)).unwrap());
    assert!(!state.revoked("any task", "spiffe://b", at(NOW)).unwrap());
    // A jti revocation never refuses a task of the same name.
    state
        .revoke(&revocation(Kind::Jti, "T-9", HOUR), at(NOW))
        .unwrap();
    assert!(!state.revoked("T-9", "spiffe://b", at(NOW)).unwrap());
    assert!(state.is_revoked(Kind::Jti, "T-9", at(NOW)).unwrap());

    // 1.5 s from x.25 s ends at the next whole second after x+1.75: it lasts at least 1.5 s.
    let state = State::in_memory();
    let now = at(NOW) + Duration::from_millis(250);
    let added = state
        .revoke(
            &revocation(Kind::Task, "T", Duration::from_millis(1500)),
            now,
        )
        .unwrap();
    assert_eq!(added.entry.expires, rfc3339(NOW + 2));
    assert!(state
        .revoked("T", "a", now + Duration::from_millis(1499))
        .unwrap());
}

#[test]
fn state_is_bounded_per_kind_at_real_capacity() {
    let mut set = Revocations::default();
    let now = at(NOW);
    for i in 0..CAPACITY {
        // Half expire within a minute, half in a day.
        let ttl = if i % 2 == 0 {
            Duration::from_secs(60)
        } else {
            24 * HOUR
        };
        set.add(&revocation(Kind::Jti, &format!("j{i}"), ttl), now)
            .unwrap();
    }
    assert_eq!(set.held(Kind::Jti), CAPACITY);
    // Full: a new jti is refused, and nothing in force was evicted for it.
    let refused = set
        .add(&revocation(Kind::Jti, "one-more", HOUR), now)
        .unwrap_err();
    assert_eq!(
        refused,
        Refused::Full {
            kind: Kind::Jti,
            capacity: CAPACITY
        }
    );
    assert!(
        refused.to_string().contains("10000 jti revocations"),
        "{refused}"
    );
    assert_eq!(set.held(Kind::Jti), CAPACITY);
    assert!((0..CAPACITY).all(|i| set.is_revoked(Kind::Jti, &format!("j{i}"), now)));
    // Lengthening one already held needs no room.
    assert!(
        set.add(&revocation(Kind::Jti, "j0", HOUR), now)
            .unwrap()
            .changed
    );
    // Tasks and agents have rooms of their own.
    set.add(&revocation(Kind::Agent, "spiffe://agent", HOUR), now)
        .unwrap();
    set.add(&revocation(Kind::Task, "T-1", HOUR), now).unwrap();
    assert!(set.is_revoked(Kind::Agent, "spiffe://agent", now));

    // Once some have expired, they are dropped to make room: never one in force.
    let later = now + Duration::from_secs(61);
    set.add(&revocation(Kind::Jti, "one-more", HOUR), later)
        .unwrap();
    // Left: the 5,000 day-long ones, j0 (lengthened to an hour) and the new one.
    assert_eq!(set.held(Kind::Jti), CAPACITY / 2 + 2);
    assert!((1..CAPACITY)
        .step_by(2)
        .all(|i| set.is_revoked(Kind::Jti, &format!("j{i}"), later)));
    assert!(set.is_revoked(Kind::Jti, "j0", later));
    assert_eq!(set.list(later).len(), CAPACITY / 2 + 2 + 2);

    // Ids and lifetimes are bounded by the request checks.
    let long_id = format!("{{\"jti\": \"{}\"}}", "x".repeat(MAX_ID + 1));
    assert_eq!(
        parse_request(long_id.as_bytes(), LIFETIMES),
        Err(RequestError::BadId)
    );
    let ok_id = format!("{{\"jti\": \"{}\"}}", "x".repeat(MAX_ID));
    assert!(parse_request(ok_id.as_bytes(), LIFETIMES).is_ok());
    assert!(matches!(
        parse_request(br#"{"jti": "j", "ttl": "31d"}"#, LIFETIMES),
        Err(RequestError::TtlTooLong { .. })
    ));
    assert_eq!(worst_case_bytes(), 3 * CAPACITY * (MAX_ID + ENTRY_OVERHEAD));
}

#[test]
fn requests_name_exactly_one_valid_id_and_a_bounded_ttl() {
    let ok = |body: &str| parse_request(body.as_bytes(), LIFETIMES);
    assert_eq!(
        ok(r#"{"task": "T-1"}"#).unwrap(),
        revocation(Kind::Task, "T-1", LIFETIMES.default)
    );
    assert_eq!(ok(r#"{"agent": "a", "ttl": "1h"}"#).unwrap().ttl, HOUR);
    assert_eq!(
        ok(r#"{"jti": "j", "ttl": " 30d "}"#).unwrap().ttl,
        LIFETIMES.max
    );
    for (body, want) in [
        (r#"{"task": "T", "agent": "a"}"#, "exactly one"),
        (r#"{}"#, "exactly one"),
        (r#"{"task": null}"#, "exactly one"),
        (r#"{"task": ""}"#, "1 to 512 bytes"),
        ("{\"task\": \"T\\n-1\"}", "without control characters"),
        (
            r#"{"task": "T", "ttl": "1000000000000y"}"#,
            "not a duration",
        ),
        (
            r#"{"task": "T", "ttl": "18446744073709551615s"}"#,
            "longer than admin.max_revocation_ttl",
        ),
        (r#"{"task": "T", "ttl": "-1s"}"#, "not a duration"),
        (r#"{"task": "T", "ttl": ""}"#, "not a duration"),
        (r#"{"task": "T", "ttl": "0"}"#, "shorter than 1s"),
        (r#"{"task": "T", "ttl": "999ms"}"#, "shorter than 1s"),
        (r#"{"task": "T", "ttl": 3600}"#, "not a JSON object like"),
        (r#"{"task": 1}"#, "not a JSON object like"),
        (
            r#"{"task": "T", "until": "forever"}"#,
            "unknown field `until`",
        ),
        ("[1, 2]", "not a JSON object like"),
        ("\u{0}\u{ff}", "not a JSON object like"),
    ] {
        let e = ok(body).unwrap_err().to_string();
        assert!(e.contains(want), "{body:?}: {e}");
    }
    // Operator input in a message is cut and escaped.
    let long_ttl = format!("{{\"task\": \"T\", \"ttl\": \"{}\\n\"}}", "9".repeat(5000));
    let e = ok(&long_ttl).unwrap_err().to_string();
    assert!(e.len() < 200 && !e.contains('\n'), "{e}");
}

#[test]
fn times_print_without_panicking_at_any_expiry() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(NOW), "2027-01-15T08:00:00Z");
    assert_eq!(rfc3339(u64::MAX), u64::MAX.to_string());
    assert_eq!(rfc3339(253_402_300_800), "253402300800");
    let mut set = Revocations::default();
    assert_eq!(
        set.add(&revocation(Kind::Task, "T", Duration::MAX), at(NOW)),
        Err(Refused::Overflow)
    );
}

#[test]
fn a_poisoned_set_fails_closed() {
    let state = std::sync::Arc::new(State::in_memory());
    let poisoner = state.clone();
    let _ = std::thread::spawn(move || {
        let _held = poisoner.revocations.write().unwrap();
        panic!("a writer fails while holding the set");
    })
    .join();
    assert_eq!(state.revoked("T", "a", at(NOW)), Err(StateUnavailable));
    assert_eq!(
        state.is_revoked(Kind::Jti, "j", at(NOW)),
        Err(StateUnavailable)
    );
    assert_eq!(state.revocations(at(NOW)), Err(StateUnavailable));
    assert!(matches!(
        state.revoke(&revocation(Kind::Task, "T", HOUR), at(NOW)),
        Err(RevokeError::Unavailable(StateUnavailable))
    ));
}

#[test]
fn revocations_survive_a_restart_through_the_state_file() {
    let dir = TempDir::new();
    let state = State::open(&dir.settings(), at(NOW)).unwrap();
    assert_eq!(state.path(), Some(dir.path().join(FILE_NAME).as_path()));
    assert!(
        !dir.path().join(FILE_NAME).exists(),
        "opening writes nothing"
    );
    state
        .revoke(&revocation(Kind::Task, "T-1", 2 * HOUR), at(NOW))
        .unwrap();
    state
        .revoke(
            &revocation(Kind::Agent, "spiffe://a", Duration::from_secs(60)),
            at(NOW),
        )
        .unwrap();
    state
        .revoke(&revocation(Kind::Jti, "j-1", HOUR), at(NOW))
        .unwrap();
    let file = dir.path().join(FILE_NAME);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let document: Document = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(document.version, VERSION);
    assert_eq!(document.revocations.len(), 3);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [FILE_NAME]);

    // Restarted two minutes later: the agent's 60 s revocation has lapsed and is dropped.
    let restarted = State::open(&dir.settings(), at(NOW + 120)).unwrap();
    assert!(restarted.revoked("T-1", "b", at(NOW + 120)).unwrap());
    assert!(!restarted
        .revoked("T-2", "spiffe://a", at(NOW + 120))
        .unwrap());
    assert!(restarted
        .is_revoked(Kind::Jti, "j-1", at(NOW + 120))
        .unwrap());
    assert_eq!(restarted.revocations(at(NOW + 120)).unwrap().len(), 2);

    // A temporary file left by a crash does not block the next write.
    std::fs::write(dir.path().join(".state.json.tmp"), b"half a docu").unwrap();
    restarted
        .revoke(&revocation(Kind::Task, "T-3", HOUR), at(NOW + 120))
        .unwrap();
    let document: Document = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(document.revocations.len(), 3);
}

#[test]
fn a_failed_write_still_revokes_and_says_it_will_not_survive() {
    let dir = TempDir::new();
    let state = State::open(&dir.settings(), at(NOW)).unwrap();
    std::fs::remove_dir_all(dir.path()).unwrap();
    let err = state
        .revoke(&revocation(Kind::Task, "T-1", HOUR), at(NOW))
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("will not survive a restart"), "{message}");
    assert!(
        message.contains(&dir.path().join(FILE_NAME).display().to_string()),
        "{message}"
    );
    assert!(matches!(err, RevokeError::NotSaved { ref added, .. } if added.entry.id == "T-1"));
    assert!(state.revoked("T-1", "a", at(NOW)).unwrap());
}

#[test]
fn a_state_file_that_cannot_be_read_refuses_the_start_saying_what_to_do() {
    let dir = TempDir::new();
    let file = dir.path().join(FILE_NAME);
    let open = |text: &str| {
        std::fs::write(&file, text).unwrap();
        State::open(&dir.settings(), at(NOW))
            .unwrap_err()
            .to_string()
    };
    let path = file.display().to_string();
    for (text, says) in [
        ("{\"version\": 1, \"revocations\": [", "is not a toolgate state document"),
        ("", "is not a toolgate state document"),
        ("{\"revocations\": []}", "has no \"version\""),
        ("{\"version\": 2, \"revocations\": []}", "has version 2; this toolgate reads version 1"),
        ("{\"version\": 1, \"leases\": []}", "unknown field `leases`"),
        (
            "{\"version\": 1, \"revocations\": [{\"kind\": \"task\", \"id\": \"T\", \"expires\": \"soon\"}]}",
            "revocations[0].expires \"soon\" is not an RFC 3339 time",
        ),
        (
            "{\"version\": 1, \"revocations\": [{\"kind\": \"tenant\", \"id\": \"T\", \"expires\": \"2030-01-01T00:00:00Z\"}]}",
            "unknown variant `tenant`",
        ),
        (
            "{\"version\": 1, \"revocations\": [{\"kind\": \"task\", \"id\": \"\", \"expires\": \"2030-01-01T00:00:00Z\"}]}",
            "revocations[0].id must be 1 to 512 bytes",
        ),
    ] {
        let message = open(text);
        assert!(message.starts_with(&path), "{message}");
        assert!(message.contains(says), "{text}: {message}");
        assert!(message.contains("Move the file aside"), "{message}");
    }

    // More entries of one kind than the room holds.
    let entries: Vec<String> = (0..=CAPACITY)
        .map(|i| {
            format!(
                "{{\"kind\": \"jti\", \"id\": \"j{i}\", \"expires\": \"2030-01-01T00:00:00Z\"}}"
            )
        })
        .collect();
    let message = open(&format!(
        "{{\"version\": 1, \"revocations\": [{}]}}",
        entries.join(",")
    ));
    assert!(message.contains("10000 jti revocations"), "{message}");

    // Expired entries are dropped, not counted.
    let expired: Vec<String> = (0..=CAPACITY)
        .map(|i| {
            format!(
                "{{\"kind\": \"jti\", \"id\": \"j{i}\", \"expires\": \"2020-01-01T00:00:00Z\"}}"
            )
        })
        .collect();
    std::fs::write(
        &file,
        format!(
            "{{\"version\": 1, \"revocations\": [{}]}}",
            expired.join(",")
        ),
    )
    .unwrap();
    let state = State::open(&dir.settings(), at(NOW)).unwrap();
    assert!(state.revocations(at(NOW)).unwrap().is_empty());

    // An empty file written by this version (no section yet) is fine.
    std::fs::write(&file, "{\"version\": 1}").unwrap();
    assert!(State::open(&dir.settings(), at(NOW)).is_ok());
}

#[test]
fn a_missing_state_dir_refuses_the_start() {
    let dir = TempDir::new();
    let missing = StateSettings {
        backend: StateBackend::Memory,
        dir: Some(dir.path().join("nope")),
    };
    let message = State::open(&missing, at(NOW)).unwrap_err().to_string();
    assert!(message.contains("does not exist"), "{message}");
    assert!(
        message.contains("remove state.dir to keep state in memory only"),
        "{message}"
    );
    let in_memory = StateSettings {
        backend: StateBackend::Memory,
        dir: None,
    };
    assert_eq!(State::open(&in_memory, at(NOW)).unwrap().path(), None);
}
