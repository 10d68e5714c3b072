//! Operator state that decisions depend on beyond the request, in this process (the
//! `memory` backend, DESIGN.md §12): the revocations, the approvals (`approvals.rs`, which
//! opens with its own bounds) and the tasks that ended (`tasks.rs`, likewise). A revoked task or agent is refused before policy runs; a
//! revoked credential id is reported by the operator API.
//!
//! Bounds: at most [`CAPACITY`] revocations of each kind (task, agent, jti) at once, each
//! kind in a room of its own, with ids of at most [`MAX_ID`] bytes — so at most
//! [`worst_case_bytes`] of heap — and lifetimes of at most `admin.max_revocation_ttl`
//! (never more than 3650 days). `state_is_bounded_per_kind_at_real_capacity` in
//! `state/tests.rs` fills a room to its real capacity and checks each of these;
//! `policy/tests/state_memory.rs` fills all three with the longest ids under a counting
//! allocator and checks the heap against [`worst_case_bytes`].
//!
//! When full: nothing is ever evicted to make room. Expired revocations of the kind are
//! dropped first; if the room is still full, the new revocation is refused
//! ([`RevokeError::Full`], a 503 for the operator) and the ones in force stay.
//!
//! When unavailable: if a writer ever panicked while holding the set, the lock is poisoned
//! and every check answers [`StateUnavailable`] — the proxy then refuses every request
//! (503, `state-unavailable`) rather than answer from a set it cannot trust. Nothing inside
//! the locked sections can panic (checked arithmetic, no indexing); the poisoning lock is
//! kept on purpose, because a lock that ignores poison would answer from a set left half
//! written.
//!
//! Kept across restarts with `state.dir`: every change rewrites `<dir>/state.json`
//! atomically (see [`StateFile`]); at start, expired entries are dropped and a file that
//! cannot be read refuses the start. If a write fails, the revocation still applies in
//! memory and the caller learns it will not survive a restart ([`RevokeError::NotSaved`]).

pub mod approvals;
mod file;
mod revocations;
pub mod tasks;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

pub use approvals::{
    Approval, ApprovalError, ApprovalStore, Approvals, Bounds, Event, EventKind, Held, NewApproval,
    Status, Stored,
};
pub use file::{Document, FileError, StateFile, FILE_NAME, MAX_FILE_BYTES, VERSION};
pub use revocations::{
    parse_request, rfc3339, valid_id, Added, Entry, Kind, Lifetimes, Refused, RequestError,
    Revocation, Revocations, CAPACITY, MAX_ID, MIN_TTL,
};
pub use tasks::{End, EndBounds, EndError, EndedTask, EndedView, Ending, Issued, TaskStore};

use crate::config::StateSettings;

/// Estimated heap of one held revocation besides its id: the map slot, the id's `String`
/// header and the expiry, with the map's spare capacity.
pub const ENTRY_OVERHEAD: usize = 96;

/// The most heap the revocation set can hold: every room full of longest ids.
pub fn worst_case_bytes() -> usize {
    Kind::ALL.len() * CAPACITY * (MAX_ID + ENTRY_OVERHEAD)
}

/// The state cannot be read: the request it was needed for must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("toolgate's operator state (revocations, approvals) is unavailable (a writer failed while holding it), so no request can be checked against it; restart toolgate")]
pub struct StateUnavailable;

/// Why a revocation was not (fully) applied.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Unavailable(#[from] StateUnavailable),
    /// Applied in memory, in force now, but not written: lost on restart.
    #[error("revoked in memory and in force now, but {path} could not be written ({error}); this revocation will not survive a restart of toolgate")]
    NotSaved {
        added: Added,
        path: String,
        error: std::io::Error,
    },
}

/// The memory backend: the revocation set and the approvals, and the file that keeps them
/// when `state.dir` is set.
#[derive(Debug)]
pub struct State {
    revocations: RwLock<Revocations>,
    approvals: RwLock<Approvals>,
    /// Approved, unused approvals (a mirror of the set's count, read without its lock).
    approved: AtomicUsize,
    /// Tasks that ended, within their retention.
    ended: RwLock<tasks::EndedTasks>,
    /// Ended tasks held (a mirror of the set's size, read without its lock).
    ended_count: AtomicUsize,
    /// The credentials issued per task (memory only).
    issued: Mutex<tasks::IssuedIndex>,
    /// Held while a snapshot is taken and written, so writes land in the order of changes.
    file: Option<Mutex<StateFile>>,
    path: Option<PathBuf>,
}

impl State {
    /// State kept in memory only.
    pub fn in_memory() -> State {
        State {
            revocations: RwLock::default(),
            approvals: RwLock::default(),
            approved: AtomicUsize::new(0),
            ended: RwLock::default(),
            ended_count: AtomicUsize::new(0),
            issued: Mutex::default(),
            file: None,
            path: None,
        }
    }

    /// Open the state `settings` describe, restoring what `state.dir` holds. Revocations that
    /// expired while toolgate was down are dropped. Nothing is written.
    pub fn open(settings: &StateSettings, now: SystemTime) -> Result<State, FileError> {
        let Some(dir) = &settings.dir else {
            return Ok(State::in_memory());
        };
        let (file, document) = StateFile::open(dir)?;
        let mut set = Revocations::default();
        let unreadable = |problem: String| FileError::Unreadable {
            path: file.path().display().to_string(),
            problem,
        };
        for (i, entry) in document.revocations.into_iter().enumerate() {
            if !valid_id(&entry.id) {
                return Err(unreadable(format!(
                    "revocations[{i}].id must be 1 to {MAX_ID} bytes without control characters"
                )));
            }
            let Some(expires) = revocations::parse_rfc3339(&entry.expires) else {
                return Err(unreadable(format!(
                    "revocations[{i}].expires {:?} is not an RFC 3339 time",
                    entry.expires
                )));
            };
            set.restore(entry.kind, entry.id, expires, now)
                .map_err(|e| unreadable(format!("revocations[{i}]: {e}")))?;
        }
        let mut approvals = Approvals::default();
        for (i, approval) in document.approvals.into_iter().enumerate() {
            approvals
                .restore(approval)
                .map_err(|e| unreadable(format!("approvals[{i}]: {e}")))?;
        }
        // What expired while toolgate was down ends now (ended ones are forgotten later, by
        // the configured retention).
        approvals.refresh(
            Bounds {
                capacity: approvals::MAX_CAPACITY,
                retention: std::time::Duration::MAX,
            },
            approvals::millis(now),
        );
        approvals.take_dirty();
        let approved = AtomicUsize::new(approvals.approved_count());
        let mut ended = tasks::EndedTasks::default();
        let secs = revocations::since_epoch(now).as_secs();
        for (i, task) in document.ended_tasks.into_iter().enumerate() {
            ended
                .restore(task, secs)
                .map_err(|e| unreadable(format!("ended_tasks[{i}]: {e}")))?;
        }
        Ok(State {
            revocations: RwLock::new(set),
            approvals: RwLock::new(approvals),
            approved,
            ended_count: AtomicUsize::new(ended.held()),
            ended: RwLock::new(ended),
            issued: Mutex::default(),
            path: Some(file.path().to_path_buf()),
            file: Some(Mutex::new(file)),
        })
    }

    /// Where the state is kept on disk; `None` when in memory only.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether `task` or `agent` is revoked at `now`: the check before every decision.
    pub fn revoked(
        &self,
        task: &str,
        agent: &str,
        now: SystemTime,
    ) -> Result<bool, StateUnavailable> {
        let set = self.revocations.read().map_err(|_| StateUnavailable)?;
        Ok(set.is_revoked(Kind::Task, task, now) || set.is_revoked(Kind::Agent, agent, now))
    }

    /// Whether `id` of `kind` is revoked at `now`.
    pub fn is_revoked(
        &self,
        kind: Kind,
        id: &str,
        now: SystemTime,
    ) -> Result<bool, StateUnavailable> {
        let set = self.revocations.read().map_err(|_| StateUnavailable)?;
        Ok(set.is_revoked(kind, id, now))
    }

    /// Every revocation in force at `now`, sorted by kind and id.
    pub fn revocations(&self, now: SystemTime) -> Result<Vec<Entry>, StateUnavailable> {
        let set = self.revocations.read().map_err(|_| StateUnavailable)?;
        Ok(set.list(now))
    }

    /// Apply `r` from `now` on (see [`Revocations::add`]), then keep the state on disk when
    /// `state.dir` is set and something changed.
    pub fn revoke(&self, r: &Revocation, now: SystemTime) -> Result<Added, RevokeError> {
        let added = {
            let mut set = self.revocations.write().map_err(|_| StateUnavailable)?;
            set.add(r, now)?
        };
        if !added.changed {
            return Ok(added);
        }
        match self.save(now) {
            Ok(()) => Ok(added),
            Err((path, error)) => Err(RevokeError::NotSaved { added, path, error }),
        }
    }

    /// Write everything in force at `now` to the state file, if there is one.
    fn save(&self, now: SystemTime) -> Result<(), (String, std::io::Error)> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let unavailable = |path: &Path| {
            (
                path.display().to_string(),
                std::io::Error::other("the state file's lock is poisoned"),
            )
        };
        let file = file.lock().map_err(|e| unavailable(e.get_ref().path()))?;
        // The snapshot is taken while the file is held: the last write has the newest state.
        let document = {
            let set = self
                .revocations
                .read()
                .map_err(|_| unavailable(file.path()))?;
            let approvals = self
                .approvals
                .read()
                .map_err(|_| unavailable(file.path()))?;
            let ended = self.ended.read().map_err(|_| unavailable(file.path()))?;
            Document {
                revocations: set.list(now),
                approvals: approvals.snapshot(),
                ended_tasks: ended.list(revocations::since_epoch(now).as_secs()),
                ..Document::default()
            }
        };
        file.save(&document)
            .map_err(|e| (file.path().display().to_string(), e))
    }
}
