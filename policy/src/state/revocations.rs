//! Revocations: what an operator stopped (a task, an agent, a credential id), until when.
//! The set, the operator's request to add to it, and the rules: a revocation only lengthens,
//! its lifetime is bounded, and each kind has a room of its own that is never evicted from.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Most revocations of one kind held at once. Each kind has its own room: ten thousand
/// credential-id revocations cannot take the place of a task's or the agent's.
pub const CAPACITY: usize = 10_000;
/// Longest identifier accepted, in bytes.
pub const MAX_ID: usize = 512;
/// Shortest lifetime a revocation may ask for (expiry is kept to the second).
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// What a revocation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Task,
    Agent,
    Jti,
}

impl Kind {
    /// Every kind, in listing order.
    pub const ALL: [Kind; 3] = [Kind::Task, Kind::Agent, Kind::Jti];

    /// The kind as the API, metrics and the state file name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Agent => "agent",
            Kind::Jti => "jti",
        }
    }
}

/// One revocation in force, as listed by `GET /v1/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub kind: Kind,
    pub id: String,
    /// When it ends, RFC 3339 to the second.
    pub expires: String,
}

/// A revocation an operator asked for, checked: one kind, a valid id, a bounded lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub kind: Kind,
    pub id: String,
    pub ttl: Duration,
}

/// The lifetimes a request is held to (`admin.revocation_ttl`, `admin.max_revocation_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub default: Duration,
    pub max: Duration,
}

/// The body of `POST /v1/revoke`: exactly one of `task`, `agent`, `jti`, and an optional `ttl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    task: Option<String>,
    agent: Option<String>,
    jti: Option<String>,
    ttl: Option<String>,
}

/// Why a revocation request was refused (a 400 the operator can act on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the body is not a JSON object like {{\"task\": \"T-1\", \"ttl\": \"1h\"}}: {0}")]
    Json(String),
    #[error("give exactly one of \"task\", \"agent\" or \"jti\"")]
    NotExactlyOne,
    #[error("the identifier must be 1 to {MAX_ID} bytes without control characters")]
    BadId,
    #[error("ttl {0} is not a duration like 30m, 24h or 7d")]
    BadTtl(String),
    #[error("ttl {0} is shorter than 1s")]
    TtlTooShort(String),
    #[error("ttl {given} is longer than admin.max_revocation_ttl ({max})")]
    TtlTooLong { given: String, max: String },
}

/// At most 64 characters of operator input, quoted and escaped, for an error message.
fn quoted(s: &str) -> String {
    let mut cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Parse and check the body of `POST /v1/revoke`. Any bytes give `Ok` or a `RequestError`.
pub fn parse_request(body: &[u8], lifetimes: Lifetimes) -> Result<Revocation, RequestError> {
    let body: Body = serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
    let (kind, id) = match (body.task, body.agent, body.jti) {
        (Some(t), None, None) => (Kind::Task, t),
        (None, Some(a), None) => (Kind::Agent, a),
        (None, None, Some(j)) => (Kind::Jti, j),
        _ => return Err(RequestError::NotExactlyOne),
    };
    if !valid_id(&id) {
        return Err(RequestError::BadId);
    }
    let ttl = match body.ttl {
        None => lifetimes.default,
        Some(text) => {
            let ttl = humantime::parse_duration(text.trim())
                .map_err(|_| RequestError::BadTtl(quoted(&text)))?;
            if ttl < MIN_TTL {
                return Err(RequestError::TtlTooShort(quoted(&text)));
            }
            if ttl > lifetimes.max {
                return Err(RequestError::TtlTooLong {
                    given: quoted(&text),
                    max: humantime::format_duration(lifetimes.max).to_string(),
                });
            }
            ttl
        }
    };
    Ok(Revocation { kind, id, ttl })
}

/// 1 to [`MAX_ID`] bytes, no control characters (ids reach logs and terminals).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID && !id.chars().any(char::is_control)
}

/// Seconds since the Unix epoch, as a `Duration` (a clock before 1970 reads as the epoch).
pub fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// `at` in RFC 3339 to the second; the plain number of seconds if humantime cannot print it
/// (beyond year 9999 — never for bounded lifetimes, but formatting must not panic).
pub fn rfc3339(expires: u64) -> String {
    let mut out = String::new();
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(expires));
    match at.map(|t| write!(out, "{}", humantime::format_rfc3339_seconds(t))) {
        Some(Ok(())) => out,
        _ => expires.to_string(),
    }
}

/// Parse what [`rfc3339`] printed.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339(text).ok()?;
    Some(since_epoch(at).as_secs())
}

/// Why a revocation could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{capacity} {} revocations are in force, the most toolgate holds, and none has expired; nothing is evicted to make room. Wait for some to expire, or revoke the agent", .kind.as_str())]
    Full { kind: Kind, capacity: usize },
    #[error("the ttl ends beyond any time toolgate can represent")]
    Overflow,
}

/// The outcome of adding a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub entry: Entry,
    /// `false` when a revocation ending at the same time or later was already in force and
    /// was kept as it was.
    pub changed: bool,
}

/// The revocations in force: per kind, id → expiry (seconds since the epoch).
#[derive(Debug, Default)]
pub struct Revocations {
    task: HashMap<String, u64>,
    agent: HashMap<String, u64>,
    jti: HashMap<String, u64>,
}

/// Whether a revocation ending at `expires` is in force at `now`.
fn in_force(expires: u64, now: Duration) -> bool {
    now < Duration::from_secs(expires)
}

impl Revocations {
    fn room(&self, kind: Kind) -> &HashMap<String, u64> {
        match kind {
            Kind::Task => &self.task,
            Kind::Agent => &self.agent,
            Kind::Jti => &self.jti,
        }
    }

    fn room_mut(&mut self, kind: Kind) -> &mut HashMap<String, u64> {
        match kind {
            Kind::Task => &mut self.task,
            Kind::Agent => &mut self.agent,
            Kind::Jti => &mut self.jti,
        }
    }

    /// Revoke `r` from `now` on. A revocation in force that ends later is kept; one that
    /// ends sooner is lengthened. At capacity, expired entries of the kind are dropped
    /// first; if the room is still full, the new revocation is refused.
    pub fn add(&mut self, r: &Revocation, now: SystemTime) -> Result<Added, Refused> {
        let now = since_epoch(now);
        let end = now.checked_add(r.ttl).ok_or(Refused::Overflow)?;
        // Rounded up: a revocation lasts at least its ttl.
        let expires = end
            .as_secs()
            .checked_add(u64::from(end.subsec_nanos() > 0))
            .ok_or(Refused::Overflow)?;
        let room = self.room_mut(r.kind);
        let current = room.get(&r.id).copied().filter(|e| in_force(*e, now));
        if let Some(kept) = current.filter(|kept| *kept >= expires) {
            return Ok(Added {
                entry: Entry {
                    kind: r.kind,
                    id: r.id.clone(),
                    expires: rfc3339(kept),
                },
                changed: false,
            });
        }
        if current.is_none() && room.len() >= CAPACITY {
            room.retain(|_, e| in_force(*e, now));
            if room.len() >= CAPACITY {
                return Err(Refused::Full {
                    kind: r.kind,
                    capacity: CAPACITY,
                });
            }
        }
        room.insert(r.id.clone(), expires);
        Ok(Added {
            entry: Entry {
                kind: r.kind,
                id: r.id.clone(),
                expires: rfc3339(expires),
            },
            changed: true,
        })
    }

    /// Restore a revocation read back from the state file; expired ones are dropped, and
    /// of two for one id the later is kept. `Err` when the kind's room is full.
    pub fn restore(
        &mut self,
        kind: Kind,
        id: String,
        expires: u64,
        now: SystemTime,
    ) -> Result<(), Refused> {
        let now = since_epoch(now);
        if !in_force(expires, now) {
            return Ok(());
        }
        let room = self.room_mut(kind);
        if let Some(e) = room.get_mut(&id) {
            *e = (*e).max(expires);
            return Ok(());
        }
        if room.len() >= CAPACITY {
            return Err(Refused::Full {
                kind,
                capacity: CAPACITY,
            });
        }
        room.insert(id, expires);
        Ok(())
    }

    /// Whether `id` of `kind` is revoked at `now`.
    pub fn is_revoked(&self, kind: Kind, id: &str, now: SystemTime) -> bool {
        let room = self.room(kind);
        !room.is_empty() && room.get(id).is_some_and(|e| in_force(*e, since_epoch(now)))
    }

    /// Every revocation in force at `now`, sorted by kind and id.
    pub fn list(&self, now: SystemTime) -> Vec<Entry> {
        let now = since_epoch(now);
        let mut all: Vec<(Kind, &str, u64)> = Kind::ALL
            .into_iter()
            .flat_map(|kind| {
                self.room(kind)
                    .iter()
                    .filter(move |(_, e)| in_force(**e, now))
                    .map(move |(id, e)| (kind, id.as_str(), *e))
            })
            .collect();
        all.sort_unstable();
        all.into_iter()
            .map(|(kind, id, expires)| Entry {
                kind,
                id: id.to_string(),
                expires: rfc3339(expires),
            })
            .collect()
    }

    /// How many revocations of `kind` are held (expired ones not yet dropped included).
    pub fn held(&self, kind: Kind) -> usize {
        self.room(kind).len()
    }
}
