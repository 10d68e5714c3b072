//! Identify: who is calling (the agent this sidecar serves) and in which task.
//!
//! A verified task token (`x-toolgate-task-token`) names the task; otherwise the agent names
//! it with `x-toolgate-task` (or the configured header); failing that, the trace id of an
//! incoming `traceparent` groups the agent's requests; failing that, they fall into the
//! agent's default task. The agent's own identity token (`agent.id_file`) must be current.

pub mod task_token;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use serde_json::Value as Json;
use toolgate_policy::config::{Agent, ChainSettings, Config, AGENT_LEEWAY};
use toolgate_policy::delegation::Delegation;

pub use task_token::{TaskToken, TaskTokenError, HEADER};

use crate::gateway::Gateway;
use crate::pipeline::Exchange;

/// The longest task id accepted.
pub const MAX_TASK_ID: usize = 128;

/// Prefix of the default task's id when the agent names none (`default-1`, `default-2`, …).
pub const DEFAULT_TASK: &str = "default";

/// A W3C trace context read from `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// Who and what a request is part of.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The task the agent named (task token, header or traceparent); `None` means the
    /// default task.
    pub task_id: Option<String>,
    /// The agent's trace context, when it sent a valid one (the trace the action joins).
    pub parent: Option<TraceParent>,
    /// The verified task token's claims (`input.task.claims`).
    pub task_claims: Option<Arc<Json>>,
    /// When the task token was issued (its `iat`), if a verified token names the task.
    pub began: Option<SystemTime>,
    /// The task's delegation, when a delegation token names it.
    pub delegation: Option<Arc<Delegation>>,
    /// The delegation token itself (for the `parent` of a further delegation).
    pub delegation_token: Option<Arc<str>>,
}

/// The agent's identity token has expired: nothing is decided until it is rotated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the agent's identity token (agent.id_file) expired at {0}; requests are refused until it is renewed")]
pub struct AgentExpired(pub String);

/// Why a request's identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    #[error(transparent)]
    BadTask(#[from] BadTask),
    #[error(transparent)]
    TaskToken(#[from] TaskTokenError),
    #[error(transparent)]
    AgentExpired(#[from] AgentExpired),
    #[error(transparent)]
    TaskRequired(#[from] TaskRequired),
}

/// `chain.require_task_token` is set and the request carries no task token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this sidecar only serves tasks an orchestrator started: send a task token in {HEADER} (a delegation counts only for a task an orchestrator started; chain.require_task_token)")]
pub struct TaskRequired;

/// The identify stage: the agent's identity is current, the task token (if sent) verifies,
/// and the task it names agrees with the task header.
pub fn request(
    headers: &HeaderMap,
    config: &Config,
    now: SystemTime,
) -> Result<Identity, IdentifyError> {
    agent_current(&config.agent, now)?;
    let mut identity = identify(headers, &config.chain)?;
    let token = task_token::verify(headers, config.task_tokens.as_ref(), &config.agent.id)?;
    if let Some(token) = token {
        if let Some(given) = headers.get(&config.chain.task_header) {
            if given.as_bytes() != token.task.as_bytes() {
                return Err(TaskTokenError::Conflict {
                    header: config.chain.task_header.to_string(),
                    given: String::from_utf8_lossy(given.as_bytes()).into_owned(),
                    token: token.task,
                }
                .into());
            }
        }
        identity.began = token
            .claims
            .get("iat")
            .and_then(Json::as_u64)
            .map(|iat| std::time::UNIX_EPOCH + Duration::from_secs(iat));
        if config.chain.require_task_token
            && token.delegation.as_ref().is_some_and(|d| !d.task_verified)
        {
            return Err(TaskRequired.into());
        }
        identity.task_id = Some(token.task);
        identity.task_claims = Some(token.claims);
        identity.delegation = token.delegation;
        identity.delegation_token = token.raw;
    } else if config.chain.require_task_token {
        return Err(TaskRequired.into());
    }
    Ok(identity)
}

/// Enter the task `identity` names (or the agent's default task) into exchange `x`: its id,
/// whether a verified token named it, and the trace its actions join.
///
/// A task handed on by a delegation counts as verified only if an orchestrator named it where
/// it started; its actions join the delegating action's trace unless the agent sent its own.
pub fn enter(gw: &Gateway, config: &Config, identity: Identity, x: &mut Exchange) {
    let named = identity.task_id.is_some();
    x.task_verified = match &identity.delegation {
        Some(d) => d.task_verified,
        None => identity.task_claims.is_some(),
    };
    x.task_began = identity.began;
    x.task_id = identity
        .task_id
        .unwrap_or_else(|| gw.default_task.current(config.chain.idle_ttl));
    let delegated_from = identity
        .delegation
        .as_ref()
        .and(identity.task_claims.as_deref())
        .and_then(|c| c.get("traceparent"))
        .and_then(Json::as_str)
        .and_then(parse_traceparent);
    crate::record::trace::join(
        x,
        identity.parent.or(delegated_from),
        &config.agent.id,
        named,
    );
    x.task_claims = identity.task_claims;
    x.delegation = identity.delegation;
    x.delegation_token = identity.delegation_token;
}

/// Refuse once the agent's identity token has expired — with the clock-skew allowance its
/// load applied (`AGENT_LEEWAY`); a rotated token is picked up by hot reload.
pub fn agent_current(agent: &Agent, now: SystemTime) -> Result<(), AgentExpired> {
    match agent.expires {
        Some(exp) if exp + AGENT_LEEWAY <= now => Err(AgentExpired(
            humantime::format_rfc3339_seconds(exp).to_string(),
        )),
        _ => Ok(()),
    }
}

/// A task header that cannot name a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{header} must be 1 to {MAX_TASK_ID} visible ASCII characters")]
pub struct BadTask {
    pub header: String,
}

/// Read the task and trace context from request headers.
pub fn identify(headers: &HeaderMap, chain: &ChainSettings) -> Result<Identity, BadTask> {
    let parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let task = match headers.get(&chain.task_header) {
        Some(v) => {
            let bytes = v.as_bytes();
            let valid = !bytes.is_empty()
                && bytes.len() <= MAX_TASK_ID
                && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
            if !valid {
                return Err(BadTask {
                    header: chain.task_header.to_string(),
                });
            }
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
        None => None,
    };
    let task_id = match (task, parent) {
        (Some(t), _) => Some(t),
        (None, Some(p)) => Some(hex::encode(p.trace_id)),
        (None, None) => None,
    };
    Ok(Identity {
        task_id,
        parent,
        task_claims: None,
        began: None,
        delegation: None,
        delegation_token: None,
    })
}

/// The agent's default task: requests that name no task belong to it until the agent has
/// been idle for `idle_ttl`, after which a new default task begins.
#[derive(Debug)]
pub struct DefaultTask {
    state: Mutex<(u64, Option<Instant>)>,
}

impl Default for DefaultTask {
    fn default() -> Self {
        DefaultTask {
            state: Mutex::new((1, None)),
        }
    }
}

impl DefaultTask {
    /// The default task's id now (`default-N`), rolling over after `idle_ttl` of inactivity.
    pub fn current(&self, idle_ttl: Duration) -> String {
        let now = Instant::now();
        let Ok(mut s) = self.state.lock() else {
            return format!("{DEFAULT_TASK}-0");
        };
        if s.1.is_some_and(|last| now.duration_since(last) >= idle_ttl) {
            s.0 += 1;
        }
        s.1 = Some(now);
        format!("{DEFAULT_TASK}-{}", s.0)
    }
}

/// Parse `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids and unknown versions are ignored.
pub fn parse_traceparent(s: &str) -> Option<TraceParent> {
    let mut parts = s.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || parent.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flag = [0u8; 1];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut parent_id).ok()?;
    hex::decode_to_slice(flags, &mut flag).ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags: flag[0],
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn chain() -> ChainSettings {
        ChainSettings {
            task_header: http::HeaderName::from_static("x-toolgate-task"),
            max_actions: 64,
            max_tasks: 512,
            idle_ttl: Duration::from_secs(900),
            agent_label_ttl: Duration::from_secs(86_400),
            require_task_token: false,
            ended_retention: Duration::from_secs(86_400),
        }
    }

    #[test]
    fn task_header_wins_then_traceparent_then_default() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        assert_eq!(identify(&h, &chain()).unwrap().task_id, None);
        h.insert("traceparent", tp.parse().unwrap());
        let id = identify(&h, &chain()).unwrap();
        assert_eq!(
            id.task_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            id.parent.map(|p| hex::encode(p.trace_id)).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        h.insert("x-toolgate-task", "T-42".parse().unwrap());
        assert_eq!(
            identify(&h, &chain()).unwrap().task_id.as_deref(),
            Some("T-42")
        );
    }

    #[test]
    fn default_task_rolls_over_after_idle_ttl() {
        let d = DefaultTask::default();
        assert_eq!(d.current(Duration::from_secs(60)), "default-1");
        assert_eq!(d.current(Duration::from_secs(60)), "default-1");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(d.current(Duration::from_millis(1)), "default-2");
    }

    #[test]
    fn bad_task_ids_are_refused() {
        for bad in ["", "has space", &"x".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert("x-toolgate-task", bad.parse().unwrap());
            assert!(identify(&h, &chain()).is_err(), "{bad:?}");
        }
    }

    fn config(extra: &str) -> Config {
        let yaml = format!("agent: {{ id: a }}\npolicy: {{ files: [p.rego] }}\n{extra}");
        let yaml: &'static str = Box::leak(yaml.into_boxed_str());
        let files = toolgate_policy::config::EmbeddedFiles::new(&[
            ("toolgate.yaml", yaml.as_bytes()),
            ("p.rego", b"package toolgate\ndefault decision := false\n"),
            ("o.json", br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#),
        ]);
        let env = toolgate_policy::config::StaticEnv::default();
        Config::load_from(std::path::Path::new("toolgate.yaml"), &files, &env).unwrap()
    }

    #[test]
    fn task_tokens_are_refused_unless_issuers_are_configured() {
        let mut h = HeaderMap::new();
        h.insert("x-toolgate-task-token", "a.b.c".parse().unwrap());
        let now = SystemTime::now();
        assert_eq!(
            request(&h, &config(""), now),
            Err(IdentifyError::TaskToken(TaskTokenError::NotAccepted))
        );
        let with = config("task_tokens: { issuers: [{ issuer: o, jwks_file: o.json }] }\n");
        assert_eq!(
            request(&h, &with, now),
            Err(IdentifyError::TaskToken(TaskTokenError::Invalid(
                toolgate_policy::config::TokenError::Malformed
            )))
        );
        h.append("x-toolgate-task-token", "d.e.f".parse().unwrap());
        assert_eq!(
            request(&h, &with, now),
            Err(IdentifyError::TaskToken(TaskTokenError::Repeated))
        );
    }

    #[test]
    fn an_expired_agent_identity_refuses_every_request() {
        let exp = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let agent = Agent {
            id: "a".into(),
            expires: Some(exp),
            ..Agent::default()
        };
        assert_eq!(agent_current(&agent, exp), Ok(()));
        assert_eq!(
            agent_current(&agent, exp + AGENT_LEEWAY - Duration::from_secs(1)),
            Ok(())
        );
        let err = agent_current(&agent, exp + AGENT_LEEWAY).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the agent's identity token (agent.id_file) expired at 2027-01-15T08:00:00Z; requests are refused until it is renewed"
        );
    }

    #[test]
    fn malformed_traceparent_is_ignored() {
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }
}
