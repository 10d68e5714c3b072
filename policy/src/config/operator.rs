//! What protects the operator API and where operator state lives: `admin.*` (the bearer
//! token, revocation lifetimes), `listen.operator` (the unix socket) and `state.*`.
//!
//! The token is judged here, once, so that `toolgate run` and `toolgate check` refuse the same
//! guessable tokens. Filesystem checks on the socket's directory and the state file happen
//! where they are used (the proxy at start, `toolgate check`), not on every reload.

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawAdmin, RawState};
use super::validate::{duration, Collector};
use super::{Files, SecretText};

/// Fewest characters an operator token may have (`openssl rand -hex 32` gives 64).
pub const MIN_TOKEN_CHARS: usize = 32;
/// Fewest distinct characters in an operator token: `aaaa…` or `0101…` are guessable.
pub const MIN_DISTINCT_TOKEN_CHARS: usize = 8;
/// Default bound on any revocation's lifetime (`admin.max_revocation_ttl`).
pub const DEFAULT_MAX_REVOCATION_TTL: &str = "30d";
/// The longest `admin.max_revocation_ttl` accepted: expiry times stay far from any overflow
/// and print as RFC 3339.
pub const LONGEST_REVOCATION_TTL: Duration = Duration::from_secs(3650 * 86_400);
/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The admin listener's protection and revocation lifetimes.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// The bearer token every `/v1/*` request must present (`admin.token_file`); without
    /// it, the operator API is off on the admin listener.
    pub token: Option<SecretText>,
    /// How long a revocation lasts unless the request says otherwise.
    pub revocation_ttl: Duration,
    /// The longest lifetime a revocation may ask for.
    pub max_revocation_ttl: Duration,
}

/// Where operator state is kept (`state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    pub backend: StateBackend,
    /// The directory holding `state.json`; `None`: memory only, lost on restart.
    pub dir: Option<PathBuf>,
}

/// The state backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateBackend {
    /// In this process, optionally kept in a file (`state.dir`).
    #[default]
    Memory,
}

pub(super) fn admin(c: &mut Collector, raw: &RawAdmin, files: &dyn Files) -> AdminSettings {
    let token = raw.token_file.as_deref().and_then(|f| token(c, f, files));
    let revocation_ttl = duration(
        c,
        "admin.revocation_ttl",
        raw.revocation_ttl.as_deref(),
        "24h",
    );
    let max_revocation_ttl = duration(
        c,
        "admin.max_revocation_ttl",
        raw.max_revocation_ttl.as_deref(),
        DEFAULT_MAX_REVOCATION_TTL,
    );
    if max_revocation_ttl > LONGEST_REVOCATION_TTL {
        c.push(
            "admin.max_revocation_ttl",
            "must be at most 3650d: a revocation that long is a config change, not a revocation",
        );
    }
    if revocation_ttl > max_revocation_ttl {
        c.push(
            "admin.revocation_ttl",
            format!(
                "{} is longer than admin.max_revocation_ttl ({})",
                raw.revocation_ttl.as_deref().unwrap_or("24h"),
                raw.max_revocation_ttl
                    .as_deref()
                    .unwrap_or(DEFAULT_MAX_REVOCATION_TTL)
            ),
        );
    }
    AdminSettings {
        token,
        revocation_ttl,
        max_revocation_ttl: max_revocation_ttl.min(LONGEST_REVOCATION_TTL),
    }
}

/// Read and judge the operator token. Messages never include the token.
fn token(c: &mut Collector, file: &str, files: &dyn Files) -> Option<SecretText> {
    const FIELD: &str = "admin.token_file";
    let located = files.locate(Path::new(file));
    let bytes = match files.read(Path::new(file)) {
        Ok(b) => b,
        Err(e) => {
            c.push(FIELD, format!("cannot read {}: {e}", located.display()));
            return None;
        }
    };
    let Ok(text) = String::from_utf8(bytes) else {
        c.push(FIELD, format!("{} is not UTF-8 text", located.display()));
        return None;
    };
    match judge_token(text.trim()) {
        Ok(()) => Some(SecretText::new(text.trim())),
        Err(why) => {
            c.push(FIELD, format!("{}: {why}", located.display()));
            None
        }
    }
}

/// Why `token` is not fit to guard the operator API; `Ok` when it is.
pub(super) fn judge_token(token: &str) -> Result<(), String> {
    judge_secret(token, "the operator token")
}

/// Why `token` (`what`, for messages) is too weak to authenticate anyone; `Ok` when it is not.
pub(super) fn judge_secret(token: &str, what: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err(format!(
            "{what} is empty: write a random one, e.g. `openssl rand -hex 32 > FILE`"
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} may hold only visible ASCII characters (no spaces or controls)"
        ));
    }
    let chars = token.len();
    if chars < MIN_TOKEN_CHARS {
        return Err(format!(
            "{what} has {chars} characters, fewer than {MIN_TOKEN_CHARS}: too easy to guess (use `openssl rand -hex 32`)"
        ));
    }
    let mut seen = [false; 128];
    let mut distinct = 0;
    for b in token.bytes() {
        if let Some(slot) = seen.get_mut(usize::from(b)) {
            if !*slot {
                *slot = true;
                distinct += 1;
            }
        }
    }
    if distinct < MIN_DISTINCT_TOKEN_CHARS {
        return Err(format!(
            "{what} uses only {distinct} distinct characters: trivially guessable (use `openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

/// `listen.operator: unix:/path` (relative paths resolve against the config's directory).
pub(super) fn socket(c: &mut Collector, raw: Option<&str>, files: &dyn Files) -> Option<PathBuf> {
    const FIELD: &str = "listen.operator";
    let raw = raw?;
    let Some(path) = raw.strip_prefix("unix:").filter(|p| !p.is_empty()) else {
        c.push(
            FIELD,
            format!("{raw:?} must be unix:/path/to/operator.sock: the operator listener is a unix socket, in a directory the agent cannot reach"),
        );
        return None;
    };
    let located = files.locate(Path::new(path));
    let Some(text) = located.to_str() else {
        c.push(FIELD, "the socket path must be UTF-8");
        return None;
    };
    if text.len() > MAX_SOCKET_PATH {
        c.push(
            FIELD,
            format!(
                "{text} is {} bytes; a unix socket path may have at most {MAX_SOCKET_PATH}",
                text.len()
            ),
        );
        return None;
    }
    if located.file_name().is_none() {
        c.push(FIELD, format!("{text} does not name a socket file"));
        return None;
    }
    Some(located)
}

/// `state: { backend: memory, dir: PATH }`.
pub(super) fn state(c: &mut Collector, raw: &RawState, files: &dyn Files) -> StateSettings {
    let backend = match raw.backend.as_deref() {
        None | Some("memory") => StateBackend::Memory,
        Some("redis") => {
            c.push(
                "state.backend",
                "the redis backend is not available in this version (it comes with toolgate issue 16); use `memory`, with `dir` to keep state across restarts",
            );
            StateBackend::Memory
        }
        Some(other) => {
            c.push(
                "state.backend",
                format!("{other:?} is not a state backend; use `memory`"),
            );
            StateBackend::Memory
        }
    };
    let dir = match raw.dir.as_deref() {
        Some("") => {
            c.push(
                "state.dir",
                "must name a directory (or leave it out to keep state in memory only)",
            );
            None
        }
        Some(d) => Some(files.locate(Path::new(d))),
        None => None,
    };
    StateSettings { backend, dir }
}
