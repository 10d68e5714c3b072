//! `state.*`: where the state decisions depend on beyond the request lives (DESIGN.md §12).
//!
//! ```yaml
//! state: { backend: memory, dir: /var/lib/toolgate }        # the default; dir optional
//! state:
//!   backend: redis
//!   url: redis://toolgate@redis:6379/0      # or rediss://…, unix:/run/redis.sock; or url_file
//!   password_file: /var/run/secrets/redis/password   # optional; else the URL's password
//!   prefix: toolgate                        # every key starts with it (share one Redis)
//!   on_unavailable: deny                    # or local: decide on this instance's view
//!   timeout: 50ms                           # per call on the request path
//!   max_tasks: 10000                        # tasks per pool held in Redis
//! ```
//!
//! The URL may hold a password, so it is a [`SecretText`] and no message here quotes it. Only
//! its form is checked here (the policy crate opens no socket); the proxy connects at start.

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawState;
use super::validate::{duration, Collector};
use super::{Files, SecretText};

/// Default `state.timeout`: a loopback or in-zone Redis answers in well under a millisecond.
pub const DEFAULT_REDIS_TIMEOUT: &str = "50ms";
/// Longest `state.timeout`: a request waits at most this long on each state call.
pub const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `state.max_tasks`: tasks held per pool (named, verified) in Redis.
pub const DEFAULT_REDIS_MAX_TASKS: usize = 10_000;
/// Largest `state.max_tasks`.
pub const MAX_REDIS_MAX_TASKS: usize = 10_000_000;
/// Longest `state.prefix`.
pub const MAX_PREFIX: usize = 64;

/// Where operator state is kept (`state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    pub backend: StateBackend,
    /// The directory holding `state.json` (memory backend); `None`: memory only, lost on
    /// restart.
    pub dir: Option<PathBuf>,
}

/// The state backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateBackend {
    /// In this process, optionally kept in a file (`state.dir`).
    #[default]
    Memory,
    /// Shared by every toolgate pointed at the same Redis (or Valkey) and prefix.
    Redis(RedisSettings),
}

/// What a request does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// Refuse it: 503 problem `state-unavailable` (fail closed).
    #[default]
    Deny,
    /// Decide on this instance's own view, flagged `input.state.degraded: true`.
    Local,
}

impl OnUnavailable {
    /// The mode as the config, metrics and `/readyz` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Deny => "deny",
            OnUnavailable::Local => "local",
        }
    }
}

/// `state.backend: redis`.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://…`, `rediss://…` or `redis+unix:///path` (from `unix:/path`).
    pub url: SecretText,
    /// From `password_file`: replaces the URL's password.
    pub password: Option<SecretText>,
    pub prefix: String,
    pub on_unavailable: OnUnavailable,
    /// The longest one state call on the request path may take.
    pub timeout: Duration,
    /// Tasks held per pool; the least recently used is evicted past it.
    pub max_tasks: usize,
}

impl PartialEq for RedisSettings {
    fn eq(&self, other: &Self) -> bool {
        self.url.expose() == other.url.expose()
            && self.password.as_ref().map(SecretText::expose)
                == other.password.as_ref().map(SecretText::expose)
            && self.prefix == other.prefix
            && self.on_unavailable == other.on_unavailable
            && self.timeout == other.timeout
            && self.max_tasks == other.max_tasks
    }
}

impl Eq for RedisSettings {}

/// Keys only the Redis backend reads, for the message when they are set with `memory`.
const REDIS_KEYS: &str = "url, url_file, password_file, prefix, on_unavailable, timeout, max_tasks";

/// `state: { backend: memory, dir: PATH }` or `state: { backend: redis, url: …, … }`.
pub(super) fn state(c: &mut Collector, raw: &RawState, files: &dyn Files) -> StateSettings {
    let redis_keys_set = raw.url.is_some()
        || raw.url_file.is_some()
        || raw.password_file.is_some()
        || raw.prefix.is_some()
        || raw.on_unavailable.is_some()
        || raw.timeout.is_some()
        || raw.max_tasks.is_some();
    let backend = match raw.backend.as_deref() {
        None | Some("memory") => {
            if redis_keys_set {
                c.push(
                    "state",
                    format!("{REDIS_KEYS} apply to `backend: redis` only; set `backend: redis` or remove them"),
                );
            }
            StateBackend::Memory
        }
        Some("redis") => {
            if raw.dir.as_deref().is_some_and(|d| !d.is_empty()) {
                c.push(
                    "state.dir",
                    "applies to the memory backend only: with `backend: redis` the state lives in Redis (make Redis persistent to keep it across its restarts)",
                );
            }
            match redis(c, raw, files) {
                Some(settings) => StateBackend::Redis(settings),
                None => StateBackend::Memory,
            }
        }
        Some(other) => {
            c.push(
                "state.backend",
                format!("{other:?} is not a state backend; use `memory` or `redis`"),
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

fn redis(c: &mut Collector, raw: &RawState, files: &dyn Files) -> Option<RedisSettings> {
    let url = match (raw.url.as_deref(), raw.url_file.as_deref()) {
        (Some(url), None) => url_of(c, "state.url", url),
        (None, Some(file)) => read_secret(c, "state.url_file", file, files)
            .and_then(|text| url_of(c, "state.url_file", text.expose())),
        (Some(_), Some(_)) => {
            c.push("state.url", "give url or url_file, not both");
            None
        }
        (None, None) => {
            c.push(
                "state.url",
                "backend redis needs url (redis://host:6379, rediss://… or unix:/path) or url_file",
            );
            None
        }
    };
    let password = raw
        .password_file
        .as_deref()
        .and_then(|f| read_secret(c, "state.password_file", f, files));
    let prefix = raw.prefix.clone().unwrap_or_else(|| "toolgate".into());
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if !prefix_ok {
        c.push(
            "state.prefix",
            format!("must be 1 to {MAX_PREFIX} characters of A-Z a-z 0-9 _ - . :"),
        );
    }
    let on_unavailable = match raw.on_unavailable.as_deref() {
        None | Some("deny") => OnUnavailable::Deny,
        Some("local") => OnUnavailable::Local,
        Some(other) => {
            c.push(
                "state.on_unavailable",
                format!("{other:?} is neither `deny` (refuse with 503 state-unavailable) nor `local` (decide on this instance's view)"),
            );
            OnUnavailable::Deny
        }
    };
    let timeout = duration(
        c,
        "state.timeout",
        raw.timeout.as_deref(),
        DEFAULT_REDIS_TIMEOUT,
    );
    if timeout > MAX_REDIS_TIMEOUT {
        c.push(
            "state.timeout",
            "must be at most 5s: every request waits on it while Redis is slow",
        );
    }
    let max_tasks = raw.max_tasks.unwrap_or(DEFAULT_REDIS_MAX_TASKS);
    if !(1..=MAX_REDIS_MAX_TASKS).contains(&max_tasks) {
        c.push(
            "state.max_tasks",
            format!("must be 1 to {MAX_REDIS_MAX_TASKS}"),
        );
    }
    Some(RedisSettings {
        url: url?,
        password,
        prefix,
        on_unavailable,
        timeout: timeout.min(MAX_REDIS_TIMEOUT),
        max_tasks: max_tasks.clamp(1, MAX_REDIS_MAX_TASKS),
    })
}

/// The URL in the form the client reads, or why not (never quoting it: it may hold a
/// password).
fn url_of(c: &mut Collector, field: &str, url: &str) -> Option<SecretText> {
    let url = url.trim();
    let normalised = if let Some(path) = url.strip_prefix("unix:") {
        // unix:/run/redis.sock, unix:///run/redis.sock
        let path = path.strip_prefix("//").unwrap_or(path);
        path.starts_with('/')
            .then(|| format!("redis+unix://{path}"))
    } else if url.starts_with("redis+unix:///") {
        Some(url.to_string())
    } else {
        let rest = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"));
        // A host (after any user:password@) must follow the scheme.
        rest.filter(|r| {
            let host = r.rsplit_once('@').map_or(*r, |(_, h)| h);
            !host.is_empty() && !host.starts_with('/') && !host.starts_with(':')
        })
        .map(|_| url.to_string())
    };
    if normalised.is_none() {
        c.push(
            field,
            "is not a Redis URL: use redis://[user[:password]@]host[:port][/db], rediss://… (TLS) or unix:/path/to/redis.sock",
        );
    }
    if url.chars().any(char::is_control) {
        c.push(field, "must not contain control characters");
        return None;
    }
    normalised.map(|u| SecretText::new(&u))
}

/// A secret read from `file`: its text without the trailing newline.
fn read_secret(
    c: &mut Collector,
    field: &str,
    file: &str,
    files: &dyn Files,
) -> Option<SecretText> {
    let located = files.locate(Path::new(file));
    let bytes = match files.read(Path::new(file)) {
        Ok(b) => b,
        Err(e) => {
            c.push(field, format!("cannot read {}: {e}", located.display()));
            return None;
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) if !text.trim().is_empty() => Some(SecretText::new(text.trim())),
        Ok(_) => {
            c.push(field, format!("{} is empty", located.display()));
            None
        }
        Err(_) => {
            c.push(field, format!("{} is not UTF-8 text", located.display()));
            None
        }
    }
}
