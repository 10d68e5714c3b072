//! Revocation: an operator stops a task, an agent or a credential id now, without a deploy.
//! A revoked task or agent is denied before policy runs, from the next request on.
//! Revocations expire (default `admin.revocation_ttl`) so the set stays bounded in time; the
//! set is also bounded in size.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Most revocations held at once; beyond it the soonest to expire is dropped.
pub const MAX_REVOCATIONS: usize = 10_000;
/// Longest identifier accepted.
pub const MAX_ID: usize = 512;

/// What a revocation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Task,
    Agent,
    Jti,
}

/// One revocation, as listed by `GET /v1/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub kind: Kind,
    pub id: String,
    /// RFC 3339.
    pub expires: String,
}

/// The body of `POST /v1/revoke`: exactly one of `task`, `agent`, `jti`, and an optional `ttl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub task: Option<String>,
    pub agent: Option<String>,
    pub jti: Option<String>,
    pub ttl: Option<String>,
}

/// Why a revocation request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("give exactly one of \"task\", \"agent\" or \"jti\"")]
    NotExactlyOne,
    #[error("the identifier must be 1 to {MAX_ID} characters")]
    BadId,
    #[error("ttl {0:?} is not a duration like 30m or 24h")]
    BadTtl(String),
}

impl Request {
    /// The kind, id and lifetime this request asks for.
    pub fn parse(self, default_ttl: Duration) -> Result<(Kind, String, Duration), RequestError> {
        let (kind, id) = match (self.task, self.agent, self.jti) {
            (Some(t), None, None) => (Kind::Task, t),
            (None, Some(a), None) => (Kind::Agent, a),
            (None, None, Some(j)) => (Kind::Jti, j),
            _ => return Err(RequestError::NotExactlyOne),
        };
        if id.is_empty() || id.len() > MAX_ID {
            return Err(RequestError::BadId);
        }
        let ttl = match self.ttl {
            Some(t) => humantime::parse_duration(&t).map_err(|_| RequestError::BadTtl(t))?,
            None => default_ttl,
        };
        Ok((kind, id, ttl))
    }
}

/// The current revocations.
#[derive(Debug, Default)]
pub struct Revocations {
    entries: Mutex<HashMap<(Kind, String), SystemTime>>,
}

impl Revocations {
    /// Revoke `id` of `kind` for `ttl` from now.
    pub fn revoke(&self, kind: Kind, id: String, ttl: Duration) -> Entry {
        let now = SystemTime::now();
        let expires = now + ttl;
        if let Ok(mut m) = self.entries.lock() {
            m.retain(|_, until| *until > now);
            if m.len() >= MAX_REVOCATIONS && !m.contains_key(&(kind, id.clone())) {
                if let Some(soonest) = m
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(k, _)| k.clone())
                {
                    m.remove(&soonest);
                }
            }
            m.insert((kind, id.clone()), expires);
        }
        Entry {
            kind,
            id,
            expires: humantime::format_rfc3339_seconds(expires).to_string(),
        }
    }

    /// Whether `id` of `kind` is revoked now.
    pub fn is_revoked(&self, kind: Kind, id: &str) -> bool {
        let Ok(m) = self.entries.lock() else {
            return false;
        };
        if m.is_empty() {
            return false;
        }
        m.get(&(kind, id.to_string()))
            .is_some_and(|until| *until > SystemTime::now())
    }

    /// Every revocation in force, sorted.
    pub fn list(&self) -> Vec<Entry> {
        let now = SystemTime::now();
        let Ok(m) = self.entries.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Entry> = m
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|((kind, id), until)| Entry {
                kind: *kind,
                id: id.clone(),
                expires: humantime::format_rfc3339_seconds(*until).to_string(),
            })
            .collect();
        out.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(task: Option<&str>, agent: Option<&str>, ttl: Option<&str>) -> Request {
        Request {
            task: task.map(String::from),
            agent: agent.map(String::from),
            jti: None,
            ttl: ttl.map(String::from),
        }
    }

    #[test]
    fn revokes_until_expiry() {
        let r = Revocations::default();
        r.revoke(Kind::Task, "T-1".into(), Duration::from_secs(60));
        r.revoke(Kind::Agent, "a".into(), Duration::from_millis(1));
        assert!(r.is_revoked(Kind::Task, "T-1"));
        assert!(!r.is_revoked(Kind::Task, "T-2"));
        assert!(!r.is_revoked(Kind::Agent, "T-1"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!r.is_revoked(Kind::Agent, "a"));
        assert_eq!(r.list().len(), 1);
    }

    #[test]
    fn requests_name_exactly_one_id() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            req(Some("T"), None, None).parse(day).unwrap(),
            (Kind::Task, "T".into(), day)
        );
        assert_eq!(
            req(Some("T"), None, Some("1h")).parse(day).unwrap().2,
            Duration::from_secs(3600)
        );
        assert_eq!(
            req(Some("T"), Some("a"), None).parse(day),
            Err(RequestError::NotExactlyOne)
        );
        assert_eq!(
            req(None, None, None).parse(day),
            Err(RequestError::NotExactlyOne)
        );
        assert_eq!(
            req(Some(""), None, None).parse(day),
            Err(RequestError::BadId)
        );
        assert!(matches!(
            req(Some("T"), None, Some("soon")).parse(day),
            Err(RequestError::BadTtl(_))
        ));
    }

    #[test]
    fn the_set_is_bounded() {
        let r = Revocations::default();
        for i in 0..MAX_REVOCATIONS + 5 {
            r.revoke(
                Kind::Jti,
                format!("j{i}"),
                Duration::from_secs(60 + i as u64),
            );
        }
        assert_eq!(r.list().len(), MAX_REVOCATIONS);
        assert!(
            !r.is_revoked(Kind::Jti, "j0"),
            "the soonest to expire goes first"
        );
    }
}
