#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use super::*;
use crate::config::{StateBackend, StateSettings};

const DAY: Duration = Duration::from_secs(86_400);

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn end(task: &str, by: &str) -> End {
    End {
        task: task.to_string(),
        by: by.to_string(),
        reason: None,
        chain: Some(json!({ "named": { "chain": [{ "action": "ticket.read" }] } })),
    }
}

fn bounds(keep_chains: usize) -> EndBounds {
    EndBounds {
        retention: DAY,
        keep_chains,
    }
}

fn jwt(jti: &str, agent: &str, exp: u64) -> Issued {
    Issued {
        jti: jti.to_string(),
        kind: "jwt",
        credential: "payments".to_string(),
        agent: agent.to_string(),
        exp,
    }
}

#[test]
fn an_ended_task_stays_ended_for_its_retention_and_the_first_end_stands() {
    let state = State::in_memory();
    let t0 = 1_800_000_000;
    assert!(!state.any_ended());
    assert_eq!(state.ended("T-1", at(t0)).unwrap(), None);
    state.issued("T-1", jwt("j-1", "a", t0 + 60), at(t0));
    state.issued("T-1", jwt("j-old", "a", t0 - 1), at(t0 - 61));
    state.issued("T-2", jwt("j-2", "a", t0 + 60), at(t0));
    let ended = state
        .end(end("T-1", "orchestrator"), bounds(8), at(t0))
        .unwrap();
    assert!(ended.unsaved.is_none());
    assert!(ended.value.changed);
    assert_eq!(ended.value.ended.by, "orchestrator");
    assert_eq!(ended.value.ended.at, "2027-01-15T08:00:00Z");
    assert_eq!(ended.value.ended.until, "2027-01-16T08:00:00Z");
    let jtis: Vec<&str> = ended
        .value
        .credentials
        .iter()
        .map(|c| c.jti.as_str())
        .collect();
    assert_eq!(jtis, ["j-1"], "only the task's unexpired credentials");
    assert!(state.any_ended());
    let view = state.ended("T-1", at(t0 + 10)).unwrap().unwrap();
    assert_eq!(
        view.chain.unwrap()["named"]["chain"][0]["action"],
        "ticket.read"
    );
    assert_eq!(state.ended("T-2", at(t0)).unwrap(), None);
    // Again: unchanged, the first end stands.
    let again = state
        .end(end("T-1", "someone-else"), bounds(8), at(t0 + 5))
        .unwrap();
    assert!(!again.value.changed);
    assert_eq!(again.value.ended.by, "orchestrator");
    // Past its retention it is no longer ended (nor listed).
    assert_eq!(state.ended("T-1", at(t0 + 86_400)).unwrap(), None);
    assert_eq!(state.ended_tasks(at(t0 + 1)).unwrap().len(), 1);
    assert!(state.ended_tasks(at(t0 + 86_400)).unwrap().is_empty());
}

#[test]
fn ends_are_never_evicted_and_chain_copies_are_bounded() {
    let mut set = EndedTasks::default();
    let t0 = 1_000;
    for i in 0..CAPACITY {
        set.end(end(&format!("T-{i}"), "op"), bounds(3), t0)
            .unwrap();
    }
    assert_eq!(set.held(), CAPACITY);
    assert_eq!(set.chains(), 3, "only the newest copies are kept");
    assert!(set.get("T-0", t0).unwrap().chain.is_none());
    assert!(set
        .get(&format!("T-{}", CAPACITY - 1), t0)
        .unwrap()
        .chain
        .is_some());
    // Full: refused, nothing evicted.
    assert_eq!(
        set.end(end("T-new", "op"), bounds(3), t0 + 1),
        Err(EndError::Full)
    );
    assert!(set.get("T-0", t0 + 1).is_some());
    // Once the first ones passed their retention, there is room again.
    let later = t0 + DAY.as_secs();
    assert!(set.end(end("T-new", "op"), bounds(3), later).unwrap().1);
    assert_eq!(set.held(), 1);
    // No copies kept at all when asked to keep none.
    let mut none = EndedTasks::default();
    none.end(end("T", "op"), bounds(0), t0).unwrap();
    assert_eq!(none.chains(), 0);
}

#[test]
fn the_issued_index_is_bounded_per_task_and_in_tasks() {
    let mut index = IssuedIndex::default();
    let now = 1_000;
    for i in 0..MAX_PER_TASK + 10 {
        index.add("T", jwt(&format!("j{i}"), "a", now + 60), now);
    }
    let (found, truncated) = index.find(&["T"], &[], now);
    assert_eq!(found.len(), MAX_PER_TASK);
    assert!(truncated, "the cut is said");
    assert!(
        !found.iter().any(|(_, c)| c.jti == "j0"),
        "the oldest left first"
    );
    // Expired credentials leave before live ones.
    let mut index = IssuedIndex::default();
    index.add("T", jwt("live", "a", now + 60), now);
    for i in 0..MAX_PER_TASK - 1 {
        index.add("T", jwt(&format!("old{i}"), "a", now + 1), now);
    }
    index.add("T", jwt("new", "a", now + 60), now + 5);
    let (found, truncated) = index.find(&["T"], &[], now + 5);
    assert!(!truncated);
    let jtis: Vec<&str> = found.iter().map(|(_, c)| c.jti.as_str()).collect();
    assert_eq!(jtis, ["live", "new"]);
    // At most MAX_TRACKED_TASKS tasks: the one expiring soonest leaves.
    let mut index = IssuedIndex::default();
    for i in 0..MAX_TRACKED_TASKS {
        index.add(&format!("T-{i}"), jwt("j", "a", now + 100 + i as u64), now);
    }
    index.add("T-extra", jwt("j", "b", now + 10_000), now);
    assert_eq!(index.size().0, MAX_TRACKED_TASKS);
    assert!(index.find(&["T-0"], &[], now).0.is_empty());
    // By agent: whatever the task.
    let (by_agent, _) = index.find(&[], &["b"], now);
    assert_eq!(by_agent.len(), 1);
    assert_eq!(by_agent[0].0, "T-extra");
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "toolgate-tasks-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn ends_are_kept_in_the_state_file_without_their_chains() {
    let dir = TempDir::new();
    let settings = StateSettings {
        backend: StateBackend::Memory,
        dir: Some(dir.path().to_path_buf()),
    };
    let now = SystemTime::now();
    let state = State::open(&settings, now).unwrap();
    state
        .end(end("T-1", "orchestrator"), bounds(8), now)
        .unwrap();
    let written = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(written.contains("\"ended_tasks\""), "{written}");
    assert!(
        !written.contains("ticket.read"),
        "no chain in the file: {written}"
    );
    drop(state);
    let reopened = State::open(&settings, now + Duration::from_secs(1)).unwrap();
    let view = reopened
        .ended("T-1", now + Duration::from_secs(1))
        .unwrap()
        .unwrap();
    assert_eq!(view.task.by, "orchestrator");
    assert!(view.chain.is_none());
    // After its retention, a restart drops it.
    let much_later = now + DAY + Duration::from_secs(5);
    let reopened = State::open(&settings, much_later).unwrap();
    assert!(reopened.ended_tasks(much_later).unwrap().is_empty());
    // An unreadable entry refuses the start, naming it.
    std::fs::write(
        dir.path().join("state.json"),
        r#"{"version": 1, "ended_tasks": [{"id": "T", "at": "yesterday", "by": "op", "until": "2999-01-01T00:00:00Z"}]}"#,
    )
    .unwrap();
    let err = State::open(&settings, now).unwrap_err().to_string();
    assert!(err.contains("ended_tasks[0]: at \"yesterday\""), "{err}");
}
