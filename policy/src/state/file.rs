//! The state file, `<state.dir>/state.json`: a versioned JSON document with one section per
//! kind of operator state, rewritten whole and atomically on every change.
//!
//! ```json
//! { "version": 1,
//!   "revocations": [ { "kind": "task", "id": "T-1", "expires": "2026-12-03T10:00:00Z" } ],
//!   "approvals": [ { "id": "…", "status": "pending", "digest": "…", … } ],
//!   "ended_tasks": [ { "id": "T-1", "at": "…", "by": "operator", "until": "…" } ] }
//! ```
//!
//! A new kind of state is a new section: a field of [`Document`] with
//! `#[serde(default)]`, so files written before it existed still load. Unknown sections and
//! unknown versions are refused rather than dropped: a file this build does not fully
//! understand is not one it may silently rewrite without them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::approvals::Approval;
use super::revocations::Entry;
use super::tasks::EndedTask;

/// The file's name inside `state.dir`.
pub const FILE_NAME: &str = "state.json";
/// The document version this build reads and writes.
pub const VERSION: u32 = 1;
/// Largest state file read: well above the most the bounded state can hold (30,000
/// revocations of ≤ 512-byte ids ≈ 18 MiB, plus 4,000 approvals of at most about 12 KiB
/// each ≈ 48 MiB, plus 10,000 ended tasks of at most about 1.2 KiB each ≈ 12 MiB), far
/// below what would strain memory.
pub const MAX_FILE_BYTES: u64 = 96 << 20;

/// The whole state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub version: u32,
    #[serde(default)]
    pub revocations: Vec<Entry>,
    /// Written only when there are approvals, so files without any stay as they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    /// Tasks that ended, within their retention (written only when there are some).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended_tasks: Vec<EndedTask>,
}

impl Default for Document {
    fn default() -> Document {
        Document {
            version: VERSION,
            revocations: Vec::new(),
            approvals: Vec::new(),
            ended_tasks: Vec::new(),
        }
    }
}

/// A state file or directory toolgate cannot start with. Its message names the file, what
/// is wrong with it, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("state.dir: {dir} {problem}; create it (writable only by toolgate's user), or remove state.dir to keep state in memory only")]
    Dir { dir: PathBuf, problem: String },
    #[error("{path}: {problem}; toolgate does not start with operator state it cannot read (revocations would silently lapse). Move the file aside (mv {path} {path}.bad) to start with none, or restore a good copy")]
    Unreadable { path: String, problem: String },
}

/// Where the state is kept, and how it is written.
#[derive(Debug)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
}

impl StateFile {
    /// The state file in `dir`, and what it holds now (an empty document when there is no
    /// file yet). Nothing is written.
    pub fn open(dir: &Path) -> Result<(StateFile, Document), FileError> {
        let dir_error = |problem: String| FileError::Dir {
            dir: dir.to_path_buf(),
            problem,
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(dir_error("is not a directory".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(dir_error("does not exist".into()))
            }
            Err(e) => return Err(dir_error(format!("cannot be read: {e}"))),
        }
        let file = StateFile {
            dir: dir.to_path_buf(),
            path: dir.join(FILE_NAME),
        };
        let document = file.read()?;
        Ok((file, document))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Document, FileError> {
        let unreadable = |problem: String| FileError::Unreadable {
            path: self.path.display().to_string(),
            problem,
        };
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Document::default()),
            Err(e) => return Err(unreadable(format!("cannot be read: {e}"))),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| unreadable(format!("cannot be read: {e}")))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(unreadable(format!(
                "is larger than {MAX_FILE_BYTES} bytes, more than toolgate ever writes"
            )));
        }
        // The version first, so a newer file is named as such rather than as corrupt.
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<u32>,
        }
        let versioned: Versioned = serde_json::from_slice(&bytes)
            .map_err(|e| unreadable(format!("is not a toolgate state document: {e}")))?;
        match versioned.version {
            Some(VERSION) => {}
            Some(v) => {
                return Err(unreadable(format!(
                    "has version {v}; this toolgate reads version {VERSION} (was it written by a newer toolgate?)"
                )))
            }
            None => return Err(unreadable("has no \"version\"".into())),
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| unreadable(format!("is not a toolgate state document: {e}")))
    }

    /// Replace the file with `document`, atomically: written to a temporary file in the same
    /// directory, flushed to disk, renamed over the old one, and the directory flushed so the
    /// rename itself survives a crash. A reader sees the old document or the new one.
    pub fn save(&self, document: &Document) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(document).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        // A temporary file left by a crash (toolgate is often pid 1 again after a restart).
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.write_all(b"\n")?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}
