//! Approvals in Redis: the lifecycle of `toolgate_policy::state::approvals`, each step one
//! script, so a consume is atomic across every replica (an approval goes out once). An
//! approval is a hash: `doc` (the approval as it was requested, JSON) and the fields that
//! change (`status`, `decided_by`, `decided_at`, `comment`, `consumed_by`, `consumed_at`).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use redis::Value as Reply;
use toolgate_policy::approval::{Digest, Verdict};
use toolgate_policy::state::approvals::{millis, new_id, rfc3339_ms, Full, MAX_CAPACITY};
use toolgate_policy::state::{
    Approval, Bounds, Event, EventKind, Held, NewApproval, Status, Stored,
};

use super::{pairs, Shared, OPERATOR_TIMEOUT};
use crate::state::{ApprovalFailure, Op, Unavailable};

fn status_of(text: &str) -> Option<Status> {
    match text {
        "pending" => Some(Status::Pending),
        "approved" => Some(Status::Approved),
        "denied" => Some(Status::Denied),
        "expired" => Some(Status::Expired),
        "consumed" => Some(Status::Consumed),
        _ => None,
    }
}

/// An approval hash as the approval it describes; `None` when it does not parse.
fn approval_of(hash: Vec<String>) -> Option<Approval> {
    let fields = pairs(hash);
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut a: Approval = serde_json::from_str(&get("doc")?).ok()?;
    a.status = status_of(&get("status")?)?;
    a.decided_by = get("decided_by");
    a.decided_at = get("decided_at");
    a.comment = get("comment");
    a.consumed_by = get("consumed_by");
    a.consumed_at = get("consumed_at");
    Some(a)
}

fn hashes(reply: Option<Reply>) -> Vec<Vec<String>> {
    reply
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or_default()
}

fn number(reply: Option<Reply>) -> i64 {
    reply
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or(0)
}

fn hash(reply: Option<Reply>) -> Vec<String> {
    reply
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or_default()
}

impl Shared {
    fn event(&self, kind: EventKind, approval: &Approval, decision_time: Option<Duration>) {
        if let Ok(mut events) = self.events.lock() {
            if events.len() >= toolgate_policy::state::approvals::MAX_EVENTS {
                events.remove(0);
            }
            events.push(Event {
                kind,
                approval: approval.clone(),
                decision_time,
            });
        }
    }

    fn expired(&self, expired: Vec<Vec<String>>) {
        for a in expired.into_iter().filter_map(approval_of) {
            self.event(EventKind::Expired, &a, None);
        }
    }

    fn limit(&self) -> Duration {
        self.settings.timeout.max(OPERATOR_TIMEOUT)
    }

    /// An approval script's invocation with the prelude's arguments.
    fn approval_call<'a>(
        &self,
        script: &'a redis::Script,
        bounds: Bounds,
        now: SystemTime,
    ) -> redis::ScriptInvocation<'a> {
        let retention = u64::try_from(bounds.retention.as_millis()).unwrap_or(u64::MAX);
        // Beyond ten years a retention is forever; keeps expiry arithmetic exact in Lua.
        let retention = retention.min(315_360_000_000);
        self.retention_ms.store(retention, Ordering::Release);
        let mut call = script.prepare_invoke();
        call.arg(&self.prefix)
            .arg(millis(now))
            .arg(bounds.capacity.min(MAX_CAPACITY))
            .arg(retention);
        call
    }
}

pub(super) async fn approved_head(s: &Shared, head: &Digest) -> Result<bool, Unavailable> {
    let mut conn = s.conn();
    let key = s.key(&["ap:heads"]);
    let mut cmd = redis::cmd("HGET");
    cmd.arg(key).arg(head.to_hex());
    let n = s
        .run(
            Op::Approval,
            s.settings.timeout,
            cmd.query_async::<Option<i64>>(&mut conn),
        )
        .await?;
    Ok(n.unwrap_or(0) > 0)
}

pub(super) async fn approved(
    s: &Shared,
    digest: &Digest,
    now: SystemTime,
) -> Result<Option<Approval>, Unavailable> {
    let mut conn = s.conn();
    let mut call = s.scripts.by_digest.prepare_invoke();
    call.key(s.key(&["apd:", &digest.to_hex()])).arg(&s.prefix);
    let hash: Vec<String> = s
        .run(
            Op::Approval,
            s.settings.timeout,
            call.invoke_async(&mut conn),
        )
        .await?;
    let fields = pairs(hash.clone());
    let expires = fields
        .iter()
        .find(|(k, _)| k == "expires")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(approval_of(hash).filter(|a| a.status == Status::Approved && millis(now) < expires))
}

pub(super) async fn consume(
    s: &Shared,
    id: &str,
    decision_id: &str,
    now: SystemTime,
) -> Result<Stored<Option<Approval>>, Unavailable> {
    let retention = Duration::from_millis(s.retention_ms.load(Ordering::Acquire));
    let bounds = Bounds {
        capacity: MAX_CAPACITY,
        retention,
    };
    let mut conn = s.conn();
    let mut call = s.approval_call(&s.scripts.consume, bounds, now);
    call.arg(id).arg(decision_id).arg(rfc3339_ms(millis(now)));
    let reply: Vec<Reply> = s
        .run(Op::Approval, s.limit(), call.invoke_async(&mut conn))
        .await?;
    let mut parts = reply.into_iter();
    let used = number(parts.next()) == 1;
    let approval = if used {
        approval_of(hash(parts.next()))
    } else {
        None
    };
    if let Some(a) = &approval {
        s.event(EventKind::Consumed, a, None);
    }
    Ok(Stored {
        value: approval,
        unsaved: None,
    })
}

pub(super) async fn hold(
    s: &Shared,
    new: NewApproval,
    bounds: Bounds,
    now: SystemTime,
) -> Result<Stored<Held>, ApprovalFailure> {
    let now_ms = millis(now);
    let ttl = u64::try_from(new.ttl.as_millis()).unwrap_or(u64::MAX);
    let expires = now_ms.saturating_add(ttl);
    let id = new_id();
    let approval = Approval::pending(id.clone(), new, now_ms, expires);
    let doc = serde_json::to_string(&approval).unwrap_or_default();
    let mut conn = s.conn();
    let mut call = s.approval_call(&s.scripts.hold, bounds, now);
    call.arg(&id)
        .arg(doc)
        .arg(approval.digest.to_hex())
        .arg(approval.head.to_hex())
        .arg(expires);
    let reply: Vec<Reply> = s
        .run(Op::Approval, s.limit(), call.invoke_async(&mut conn))
        .await?;
    let mut parts = reply.into_iter();
    let created = number(parts.next());
    let found = hash(parts.next());
    s.expired(hashes(parts.next()));
    match created {
        1 => {
            s.event(EventKind::Requested, &approval, None);
            Ok(Stored {
                value: Held {
                    approval,
                    created: true,
                },
                unsaved: None,
            })
        }
        0 => match approval_of(found) {
            Some(existing) => Ok(Stored {
                value: Held {
                    approval: existing,
                    created: false,
                },
                unsaved: None,
            }),
            None => Err(Unavailable::new("an approval stored in Redis does not parse").into()),
        },
        _ => Err(ApprovalFailure::Full(Full {
            capacity: bounds.capacity.min(MAX_CAPACITY),
        })),
    }
}

pub(super) async fn decide(
    s: &Shared,
    id: &str,
    approve: bool,
    verdict: &Verdict,
    bounds: Bounds,
    now: SystemTime,
) -> Result<Stored<Approval>, ApprovalFailure> {
    let mut conn = s.conn();
    let mut call = s.approval_call(&s.scripts.decide, bounds, now);
    call.arg(id)
        .arg(if approve { "1" } else { "0" })
        .arg(&verdict.approver)
        .arg(rfc3339_ms(millis(now)))
        .arg(verdict.comment.as_deref().unwrap_or_default())
        .arg(if verdict.comment.is_some() { "1" } else { "0" });
    let reply: Vec<Reply> = s
        .run(Op::Approval, s.limit(), call.invoke_async(&mut conn))
        .await?;
    let mut parts = reply.into_iter();
    let status = number(parts.next());
    let found = approval_of(hash(parts.next()));
    s.expired(hashes(parts.next()));
    match (status, found) {
        (1, Some(a)) => {
            let took = humantime::parse_rfc3339(&a.requested_at)
                .ok()
                .and_then(|at| now.duration_since(at).ok());
            let kind = if approve {
                EventKind::Approved
            } else {
                EventKind::Denied
            };
            s.event(kind, &a, took);
            Ok(Stored {
                value: a,
                unsaved: None,
            })
        }
        (-2, Some(a)) => Err(ApprovalFailure::NotPending {
            id: id.to_string(),
            status: a.status,
        }),
        (-1, _) => Err(ApprovalFailure::NotFound(id.to_string())),
        _ => Err(Unavailable::new("an approval stored in Redis does not parse").into()),
    }
}

/// Approval `id`, or (`None`) every approval in force, oldest first.
pub(super) async fn read(
    s: &Shared,
    id: Option<&str>,
    bounds: Bounds,
    now: SystemTime,
) -> Result<Vec<Approval>, Unavailable> {
    let mut conn = s.conn();
    let mut call = s.approval_call(&s.scripts.read, bounds, now);
    call.arg(id.unwrap_or_default());
    let reply: Vec<Reply> = s
        .run(Op::Approval, s.limit(), call.invoke_async(&mut conn))
        .await?;
    let mut parts = reply.into_iter();
    let found = hashes(parts.next());
    s.expired(hashes(parts.next()));
    Ok(found.into_iter().filter_map(approval_of).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unknown_statuses_and_broken_documents_are_not_approvals() {
        assert_eq!(status_of("approved"), Some(Status::Approved));
        assert_eq!(status_of("APPROVED"), None);
        assert!(approval_of(vec!["doc".into(), "{}".into()]).is_none());
        assert!(approval_of(vec![]).is_none());
    }
}
