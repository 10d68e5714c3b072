//! Approvals: requests held for a human, and what the human decided. Each approval is bound
//! to one request by its digest (`crate::approval`) and lives through one lifecycle:
//!
//! ```text
//! pending ──approve──▶ approved ──the identical request, allowed again──▶ consumed
//!    │                    │
//!    ├──deny──▶ denied    └──ttl ends──▶ expired
//!    └──ttl ends──▶ expired
//! ```
//!
//! An approval is used once: consuming it is one atomic step under the store's lock, written
//! to the state file before the request goes out, so two identical retries — or a retry, a
//! crash and a retry — never both pass.
//!
//! Bounds: at most `approvals.max_pending` approvals in force (pending or approved; at most
//! [`MAX_CAPACITY`]), each holding at most the bounded shown request (`crate::approval`:
//! body, headers and attributes cut for display, the whole body bound by its hash) — and as
//! many ended ones (denied, expired, consumed), kept for `approvals.retention` so an
//! identical retry learns it was denied or expired. When full: a pending or approved approval
//! is never evicted; expired ones are ended first, and if the room is still full the new
//! approval is refused ([`Full`], a 503 for the agent, counted). Ended approvals beyond the
//! bound are forgotten oldest first. `state/approvals/tests.rs` fills the room to capacity.
//!
//! When unavailable: a poisoned lock answers [`StateUnavailable`], and the proxy refuses the
//! request (503) rather than decide without its approvals.
//!
//! A shared backend (Redis, toolgate issue 16) implements [`ApprovalStore`]; [`State`] is the
//! memory one, kept in `<state.dir>/state.json` beside the revocations.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::{State, StateUnavailable};
use crate::approval::{valid_comment, valid_name, Digest, Granted, Shown, Verdict};

/// The most approvals in force (`approvals.max_pending` may not exceed it).
pub const MAX_CAPACITY: usize = 2_000;
/// Events kept for the proxy to collect; beyond it the oldest are dropped (nobody collects
/// them offline).
pub const MAX_EVENTS: usize = 4_096;

/// Where an approval is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
}

impl Status {
    /// The status as the API, metrics and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Consumed => "consumed",
        }
    }

    /// Pending or approved: it counts toward the capacity and is never evicted.
    pub fn in_force(self) -> bool {
        matches!(self, Status::Pending | Status::Approved)
    }
}

/// One approval, as the operator API lists it and the state file keeps it. Never holds a
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Unguessable: a UUIDv4 (122 random bits).
    pub id: String,
    pub status: Status,
    /// The request it is bound to.
    pub digest: Digest,
    /// The request's digest without its body.
    pub head: Digest,
    pub agent: String,
    pub task: String,
    #[serde(default)]
    pub task_verified: bool,
    pub action: String,
    pub tool: Option<String>,
    pub attributes: Map<String, Json>,
    pub request: Shown,
    /// Why a human must look (the decision's approval reason, else its reason).
    pub reason: String,
    #[serde(default)]
    pub approvers: Vec<String>,
    /// The decision that asked for it, and its trace.
    pub decision_id: String,
    pub trace_id: String,
    /// RFC 3339, to the millisecond.
    pub requested_at: String,
    pub expires_at: String,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub decided_at: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    /// The decision id of the retry that used it.
    #[serde(default)]
    pub consumed_by: Option<String>,
    #[serde(default)]
    pub consumed_at: Option<String>,
}

impl Approval {
    /// A pending approval `id` for `new`, requested at `now_ms`, expiring at `expires_ms`
    /// (milliseconds since the epoch) — the one shape every backend stores.
    pub fn pending(id: String, new: NewApproval, now_ms: u64, expires_ms: u64) -> Approval {
        Approval {
            id,
            status: Status::Pending,
            digest: new.digest,
            head: new.head,
            agent: new.agent,
            task: new.task,
            task_verified: new.task_verified,
            action: new.action,
            tool: new.tool,
            attributes: new.attributes,
            request: new.request,
            reason: new.reason,
            approvers: new.approvers,
            decision_id: new.decision_id,
            trace_id: new.trace_id,
            requested_at: rfc3339_ms(now_ms),
            expires_at: rfc3339_ms(expires_ms),
            decided_by: None,
            decided_at: None,
            comment: None,
            consumed_by: None,
            consumed_at: None,
        }
    }

    /// `input.approval` for a request that matched this approval.
    pub fn granted(&self) -> Granted {
        Granted {
            id: self.id.clone(),
            approved_by: self.decided_by.clone().unwrap_or_default(),
            approved_at: self.decided_at.clone().unwrap_or_default(),
            comment: self.comment.clone(),
        }
    }
}

/// A request to hold for a human: everything an [`Approval`] shows, and its lifetime.
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub digest: Digest,
    pub head: Digest,
    pub agent: String,
    pub task: String,
    pub task_verified: bool,
    pub action: String,
    pub tool: Option<String>,
    pub attributes: Map<String, Json>,
    pub request: Shown,
    pub reason: String,
    pub approvers: Vec<String>,
    pub decision_id: String,
    pub trace_id: String,
    pub ttl: Duration,
}

/// The bounds a store is held to (`approvals.max_pending`, `approvals.retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub capacity: usize,
    pub retention: Duration,
}

/// What happened to an approval, for metrics, the webhook and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Requested,
    Approved,
    Denied,
    Expired,
    Consumed,
}

impl EventKind {
    /// The `event` label of `toolgate_approvals_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Requested => "requested",
            EventKind::Approved => "approved",
            EventKind::Denied => "denied",
            EventKind::Expired => "expired",
            EventKind::Consumed => "consumed",
        }
    }
}

/// One change of an approval.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub approval: Approval,
    /// For a human decision: how long it took from the request.
    pub decision_time: Option<Duration>,
}

/// The room for approvals in force is full: nothing is evicted to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{capacity} approvals are pending or approved, the most toolgate holds (approvals.max_pending); none is evicted to make room. Decide or let some expire, then retry")]
pub struct Full {
    pub capacity: usize,
}

/// Why an approval could not be held or decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Unavailable(#[from] StateUnavailable),
    #[error(transparent)]
    Full(#[from] Full),
    #[error("no approval {0:?} is known (it never existed, or ended longer ago than approvals.retention)")]
    NotFound(String),
    /// Only a pending approval can be decided.
    #[error("approval {id} is {}, not pending: it cannot be decided again", .status.as_str())]
    NotPending { id: String, status: Status },
}

/// A change applied in memory, and whether it reached the state file.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub value: T,
    /// The state file could not be written (the change holds in memory only).
    pub unsaved: Option<String>,
}

/// How a request that policy sent to a human is held.
#[derive(Debug, Clone)]
pub struct Held {
    /// The approval its digest meets: a new pending one, or the one already there.
    pub approval: Approval,
    /// A new approval was requested for it.
    pub created: bool,
}

/// What a decision needs from approval state, and what the operator API changes. The memory
/// backend is [`State`]; a shared one (Redis) implements the same.
pub trait ApprovalStore: Send + Sync + std::fmt::Debug {
    /// Whether any approval is approved and unused: when none is (almost always), no request
    /// needs its digest computed. Never blocks.
    fn any_approved(&self) -> bool;

    /// Whether an approved approval has head digest `head`: only then is a streamed body read
    /// to compute the full digest.
    fn approved_head(&self, head: &Digest) -> Result<bool, StateUnavailable>;

    /// The approved, unused, unexpired approval bound to `digest`, if any.
    fn approved(
        &self,
        digest: &Digest,
        now: SystemTime,
    ) -> Result<Option<Approval>, StateUnavailable>;

    /// Use approval `id` for the request `decision_id` forwards; `Ok(None)` when it is no
    /// longer approved (used by another request, expired): the request must not go out on it.
    fn consume(
        &self,
        id: &str,
        decision_id: &str,
        now: SystemTime,
    ) -> Result<Stored<Option<Approval>>, StateUnavailable>;

    /// Hold `new` for a human: the approval its digest already meets (pending, or denied or
    /// expired within retention), else a new pending one — unless the room is full.
    fn hold(
        &self,
        new: NewApproval,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Held>, ApprovalError>;

    /// Approve (`approve`) or deny pending approval `id`.
    fn decide(
        &self,
        id: &str,
        approve: bool,
        verdict: &Verdict,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Approval>, ApprovalError>;

    /// Approval `id`, whatever its status, while it is kept.
    fn get(
        &self,
        id: &str,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Option<Approval>, StateUnavailable>;

    /// The approvals in force (pending and approved), oldest first.
    fn list(&self, bounds: Bounds, now: SystemTime) -> Result<Vec<Approval>, StateUnavailable>;

    /// The events since the last call, oldest first.
    fn take_events(&self) -> Vec<Event>;
}

/// Milliseconds since the Unix epoch (a clock before 1970 reads as the epoch).
pub fn millis(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// `ms` since the epoch in RFC 3339 to the millisecond (the number itself if it cannot be
/// printed).
pub fn rfc3339_ms(ms: u64) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
        Some(t) if ms < 253_402_300_799_000 => humantime::format_rfc3339_millis(t).to_string(),
        _ => ms.to_string(),
    }
}

fn parse_ms(text: &str) -> Option<u64> {
    humantime::parse_rfc3339(text).ok().map(millis)
}

/// A new approval id: a UUIDv4 from the OS's randomness.
pub fn new_id() -> String {
    let mut b: [u8; 16] = rand::random();
    if let Some(v) = b.get_mut(6) {
        *v = (*v & 0x0f) | 0x40;
    }
    if let Some(v) = b.get_mut(8) {
        *v = (*v & 0x3f) | 0x80;
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let part = |r: std::ops::Range<usize>| hex.get(r).unwrap_or_default().to_string();
    format!(
        "{}-{}-{}-{}-{}",
        part(0..8),
        part(8..12),
        part(12..16),
        part(16..20),
        part(20..32)
    )
}

/// Whether `id` has the shape of an approval id (so nothing else is looked up or logged).
pub fn valid_approval_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit() && !b.is_ascii_uppercase(),
        })
}

#[derive(Debug, Clone)]
struct Entry {
    approval: Approval,
    requested: u64,
    expires: u64,
    /// When it was denied, expired or consumed.
    ended: Option<u64>,
}

/// The approvals of this process: the memory set behind [`State`].
#[derive(Debug, Default)]
pub struct Approvals {
    entries: HashMap<String, Entry>,
    /// digest → the approval a request with that digest meets (in force, or denied or
    /// expired and kept); a consumed approval leaves it, so the next identical request asks
    /// again.
    by_digest: HashMap<Digest, String>,
    /// head digest → how many approved approvals have it.
    approved_heads: HashMap<Digest, usize>,
    /// Pending and approved approvals.
    in_force: usize,
    events: Vec<Event>,
    /// Something changed since the state file was last written.
    dirty: bool,
}

impl Approvals {
    /// How many approvals are pending or approved.
    pub fn in_force(&self) -> usize {
        self.in_force
    }

    /// How many approvals are kept, ended ones included.
    pub fn held(&self) -> usize {
        self.entries.len()
    }

    /// How many approved approvals are unused.
    pub fn approved_count(&self) -> usize {
        self.approved_heads.values().sum()
    }

    /// Whether something changed since the last call (the state file must be written).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    fn push_event(
        &mut self,
        kind: EventKind,
        approval: &Approval,
        decision_time: Option<Duration>,
    ) {
        self.dirty = true;
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(0);
        }
        self.events.push(Event {
            kind,
            approval: approval.clone(),
            decision_time,
        });
    }

    fn unapprove_head(&mut self, head: &Digest) {
        if let Some(n) = self.approved_heads.get_mut(head) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.approved_heads.remove(head);
            }
        }
    }

    /// End what expired by `now`, and forget ended approvals kept longer than `retention`
    /// (and, beyond `capacity` of them, the oldest). Whether anything changed.
    pub fn refresh(&mut self, bounds: Bounds, now: u64) -> bool {
        let mut changed = false;
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.approval.status.in_force() && e.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            let was = entry.approval.status;
            entry.approval.status = Status::Expired;
            entry.ended = Some(entry.expires);
            let (approval, head) = (entry.approval.clone(), entry.approval.head);
            self.in_force = self.in_force.saturating_sub(1);
            if was == Status::Approved {
                self.unapprove_head(&head);
            }
            self.push_event(EventKind::Expired, &approval, None);
            changed = true;
        }
        let retention = u64::try_from(bounds.retention.as_millis()).unwrap_or(u64::MAX);
        let mut ended: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter_map(|(id, e)| e.ended.map(|at| (at, id.clone())))
            .collect();
        ended.sort_unstable();
        let excess = ended.len().saturating_sub(bounds.capacity);
        for (i, (at, id)) in ended.into_iter().enumerate() {
            if i < excess || at.saturating_add(retention) <= now {
                self.forget(&id);
                changed = true;
            }
        }
        changed
    }

    fn forget(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.dirty = true;
            if self
                .by_digest
                .get(&entry.approval.digest)
                .map(String::as_str)
                == Some(id)
            {
                self.by_digest.remove(&entry.approval.digest);
            }
        }
    }

    /// See [`ApprovalStore::approved`].
    pub fn approved(&self, digest: &Digest, now: u64) -> Option<&Approval> {
        let entry = self.entries.get(self.by_digest.get(digest)?)?;
        (entry.approval.status == Status::Approved && now < entry.expires)
            .then_some(&entry.approval)
    }

    /// See [`ApprovalStore::approved_head`].
    pub fn approved_head(&self, head: &Digest) -> bool {
        self.approved_heads.contains_key(head)
    }

    /// See [`ApprovalStore::consume`]; whether it changed anything.
    pub fn consume(&mut self, id: &str, decision_id: &str, now: u64) -> Option<Approval> {
        let entry = self.entries.get_mut(id)?;
        if entry.approval.status != Status::Approved || now >= entry.expires {
            return None;
        }
        entry.approval.status = Status::Consumed;
        entry.approval.consumed_by = Some(decision_id.to_string());
        entry.approval.consumed_at = Some(rfc3339_ms(now));
        entry.ended = Some(now);
        let approval = entry.approval.clone();
        self.in_force = self.in_force.saturating_sub(1);
        self.unapprove_head(&approval.head);
        if self.by_digest.get(&approval.digest).map(String::as_str) == Some(id) {
            self.by_digest.remove(&approval.digest);
        }
        self.push_event(EventKind::Consumed, &approval, None);
        Some(approval)
    }

    /// See [`ApprovalStore::hold`].
    pub fn hold(&mut self, new: NewApproval, bounds: Bounds, now: u64) -> Result<Held, Full> {
        self.refresh(bounds, now);
        if let Some(entry) = self
            .by_digest
            .get(&new.digest)
            .and_then(|id| self.entries.get(id))
        {
            return Ok(Held {
                approval: entry.approval.clone(),
                created: false,
            });
        }
        let capacity = bounds.capacity.min(MAX_CAPACITY);
        if self.in_force >= capacity {
            return Err(Full { capacity });
        }
        let ttl = u64::try_from(new.ttl.as_millis()).unwrap_or(u64::MAX);
        let expires = now.saturating_add(ttl);
        let mut id = new_id();
        while self.entries.contains_key(&id) {
            id = new_id();
        }
        let approval = Approval::pending(id.clone(), new, now, expires);
        self.by_digest.insert(approval.digest, id.clone());
        self.in_force += 1;
        self.push_event(EventKind::Requested, &approval, None);
        self.entries.insert(
            id,
            Entry {
                approval: approval.clone(),
                requested: now,
                expires,
                ended: None,
            },
        );
        Ok(Held {
            approval,
            created: true,
        })
    }

    /// See [`ApprovalStore::decide`].
    pub fn decide(
        &mut self,
        id: &str,
        approve: bool,
        verdict: &Verdict,
        bounds: Bounds,
        now: u64,
    ) -> Result<Approval, ApprovalError> {
        self.refresh(bounds, now);
        let entry = self
            .entries
            .get_mut(id)
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        if entry.approval.status != Status::Pending {
            return Err(ApprovalError::NotPending {
                id: id.to_string(),
                status: entry.approval.status,
            });
        }
        entry.approval.status = if approve {
            Status::Approved
        } else {
            Status::Denied
        };
        entry.approval.decided_by = Some(verdict.approver.clone());
        entry.approval.decided_at = Some(rfc3339_ms(now));
        entry.approval.comment = verdict.comment.clone();
        if !approve {
            entry.ended = Some(now);
        }
        let took = Duration::from_millis(now.saturating_sub(entry.requested));
        let approval = entry.approval.clone();
        if approve {
            *self.approved_heads.entry(approval.head).or_default() += 1;
        } else {
            self.in_force = self.in_force.saturating_sub(1);
        }
        let kind = if approve {
            EventKind::Approved
        } else {
            EventKind::Denied
        };
        self.push_event(kind, &approval, Some(took));
        Ok(approval)
    }

    /// See [`ApprovalStore::get`].
    pub fn get(&self, id: &str) -> Option<&Approval> {
        self.entries.get(id).map(|e| &e.approval)
    }

    /// See [`ApprovalStore::list`].
    pub fn list(&self) -> Vec<Approval> {
        let mut out: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| e.approval.status.in_force())
            .collect();
        out.sort_by(|a, b| (a.requested, &a.approval.id).cmp(&(b.requested, &b.approval.id)));
        out.into_iter().map(|e| e.approval.clone()).collect()
    }

    /// Every approval kept, oldest first: the state file's `approvals` section.
    pub fn snapshot(&self) -> Vec<Approval> {
        let mut out: Vec<&Entry> = self.entries.values().collect();
        out.sort_by(|a, b| (a.requested, &a.approval.id).cmp(&(b.requested, &b.approval.id)));
        out.into_iter().map(|e| e.approval.clone()).collect()
    }

    /// The events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Restore an approval read back from the state file (statuses as written; [`refresh`]
    /// then ends what expired while toolgate was down). `Err` names what is wrong.
    ///
    /// [`refresh`]: Approvals::refresh
    pub fn restore(&mut self, approval: Approval) -> Result<(), String> {
        if !valid_approval_id(&approval.id) {
            return Err("id is not an approval id (a lower-case UUID)".into());
        }
        if self.entries.contains_key(&approval.id) {
            return Err(format!("approval {} appears twice", approval.id));
        }
        let requested =
            parse_ms(&approval.requested_at).ok_or("requested_at is not an RFC 3339 time")?;
        let expires = parse_ms(&approval.expires_at).ok_or("expires_at is not an RFC 3339 time")?;
        let time = |t: &Option<String>, name: &str| match t {
            None => Ok(None),
            Some(t) => parse_ms(t)
                .map(Some)
                .ok_or(format!("{name} is not an RFC 3339 time")),
        };
        let decided = time(&approval.decided_at, "decided_at")?;
        let consumed = time(&approval.consumed_at, "consumed_at")?;
        let names_ok = valid_name(&approval.agent)
            && approval.decided_by.as_deref().is_none_or(valid_name)
            && approval.comment.as_deref().is_none_or(valid_comment);
        if !names_ok {
            return Err("agent, decided_by or comment is not valid".into());
        }
        let status = approval.status;
        let decided_needed = matches!(status, Status::Approved | Status::Denied | Status::Consumed);
        if decided_needed && (decided.is_none() || approval.decided_by.is_none()) {
            return Err(format!(
                "a {} approval needs decided_by and decided_at",
                status.as_str()
            ));
        }
        if status.in_force() && self.in_force >= MAX_CAPACITY {
            return Err(format!("more than {MAX_CAPACITY} approvals in force"));
        }
        let ended = match status {
            Status::Pending | Status::Approved => None,
            Status::Denied => decided,
            Status::Expired => Some(expires),
            Status::Consumed => Some(consumed.ok_or("a consumed approval needs consumed_at")?),
        };
        if status.in_force() {
            self.in_force += 1;
        }
        if status == Status::Approved {
            *self.approved_heads.entry(approval.head).or_default() += 1;
        }
        if status != Status::Consumed {
            self.by_digest.insert(approval.digest, approval.id.clone());
        }
        self.entries.insert(
            approval.id.clone(),
            Entry {
                approval,
                requested,
                expires,
                ended,
            },
        );
        Ok(())
    }
}

impl State {
    fn approvals_write(
        &self,
    ) -> Result<std::sync::RwLockWriteGuard<'_, Approvals>, StateUnavailable> {
        self.approvals.write().map_err(|_| StateUnavailable)
    }

    /// Keep the approved count the request path reads without a lock.
    fn mirror(&self, set: &Approvals) {
        self.approved.store(set.approved_count(), Ordering::Release);
    }

    /// Write the state file if `set` changed; why it could not be written, if it could not.
    fn saved(&self, changed: bool, now: SystemTime) -> Option<String> {
        if !changed {
            return None;
        }
        self.save(now)
            .err()
            .map(|(path, e)| format!("{path} could not be written ({e}); this change will not survive a restart of toolgate"))
    }
}

impl ApprovalStore for State {
    fn any_approved(&self) -> bool {
        self.approved.load(Ordering::Acquire) > 0
    }

    fn approved_head(&self, head: &Digest) -> Result<bool, StateUnavailable> {
        let set = self.approvals.read().map_err(|_| StateUnavailable)?;
        Ok(set.approved_head(head))
    }

    fn approved(
        &self,
        digest: &Digest,
        now: SystemTime,
    ) -> Result<Option<Approval>, StateUnavailable> {
        let set = self.approvals.read().map_err(|_| StateUnavailable)?;
        Ok(set.approved(digest, millis(now)).cloned())
    }

    fn consume(
        &self,
        id: &str,
        decision_id: &str,
        now: SystemTime,
    ) -> Result<Stored<Option<Approval>>, StateUnavailable> {
        let (consumed, changed) = {
            let mut set = self.approvals_write()?;
            let consumed = set.consume(id, decision_id, millis(now));
            self.mirror(&set);
            (consumed, set.take_dirty())
        };
        let unsaved = self.saved(changed, now);
        Ok(Stored {
            value: consumed,
            unsaved,
        })
    }

    fn hold(
        &self,
        new: NewApproval,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Held>, ApprovalError> {
        let (held, changed) = {
            let mut set = self.approvals_write()?;
            let held = set.hold(new, bounds, millis(now));
            self.mirror(&set);
            (held, set.take_dirty())
        };
        let unsaved = self.saved(changed, now);
        let held = held?;
        Ok(Stored {
            value: held,
            unsaved,
        })
    }

    fn decide(
        &self,
        id: &str,
        approve: bool,
        verdict: &Verdict,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Approval>, ApprovalError> {
        let (decided, changed) = {
            let mut set = self.approvals_write()?;
            let decided = set.decide(id, approve, verdict, bounds, millis(now));
            self.mirror(&set);
            (decided, set.take_dirty())
        };
        let unsaved = self.saved(changed, now);
        let decided = decided?;
        Ok(Stored {
            value: decided,
            unsaved,
        })
    }

    fn get(
        &self,
        id: &str,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Option<Approval>, StateUnavailable> {
        let (found, changed) = {
            let mut set = self.approvals_write()?;
            set.refresh(bounds, millis(now));
            self.mirror(&set);
            (set.get(id).cloned(), set.take_dirty())
        };
        if let Some(e) = self.saved(changed, now) {
            tracing::error!("approvals: {e}");
        }
        Ok(found)
    }

    fn list(&self, bounds: Bounds, now: SystemTime) -> Result<Vec<Approval>, StateUnavailable> {
        let (list, changed) = {
            let mut set = self.approvals_write()?;
            set.refresh(bounds, millis(now));
            self.mirror(&set);
            (set.list(), set.take_dirty())
        };
        if let Some(e) = self.saved(changed, now) {
            tracing::error!("approvals: {e}");
        }
        Ok(list)
    }

    fn take_events(&self) -> Vec<Event> {
        match self.approvals.write() {
            Ok(mut set) => set.take_events(),
            Err(_) => Vec::new(),
        }
    }
}
