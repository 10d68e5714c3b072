//! The memory backend: this process's chain ledger, revocations and approvals, exactly as the
//! policy crate keeps them (its modules open with their bounds), plus the default task. What
//! it holds is lost on restart except what `state.dir` keeps (revocations, approvals).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::Value as Json;
use toolgate_policy::approval::{Digest, Verdict};
use toolgate_policy::chain::{Action, Ledger, Outcome, Recorded, SpanRef, Stats, TaskKey};
use toolgate_policy::config::ChainSettings;
use toolgate_policy::state::{
    Added, Approval, ApprovalStore, Bounds, End, EndBounds, EndedTask, EndedView, Ending, Entry,
    Event, Held, Issued, Kind, NewApproval, Revocation, State, Stored, TaskStore,
};

use super::{
    ApprovalFailure, EndFailure, Health, Observed, Reserve, RevokeFailure, StateMetrics,
    StateStore, Unavailable,
};
use crate::identify::DefaultTask;

/// State in this process.
#[derive(Debug)]
pub struct MemoryStore {
    pub ledger: Ledger,
    pub state: State,
    default_task: DefaultTask,
    metrics: StateMetrics,
}

impl MemoryStore {
    /// A store bounded by `chain`, with the operator `state` opened at start.
    pub fn new(chain: &ChainSettings, state: State) -> MemoryStore {
        MemoryStore {
            ledger: Ledger::new(chain),
            state,
            default_task: DefaultTask::default(),
            metrics: StateMetrics::default(),
        }
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn default_task(&self, _agent: &str, idle_ttl: Duration) -> String {
        self.default_task.current(idle_ttl)
    }

    async fn observe(
        &self,
        task: &TaskKey<'_>,
        agent: &str,
        now: SystemTime,
        _reserve: Option<&Reserve<'_>>,
    ) -> Result<Observed, Unavailable> {
        let revoked = self.state.revoked(task.id, agent, now)?;
        let ended = match revoked {
            true => None,
            false => self.state.ended(task.id, now)?.map(|v| Box::new(v.task)),
        };
        Ok(Observed {
            revoked,
            ended,
            view: self.ledger.view(task, agent, now),
            note: None,
            reserved: None,
        })
    }

    async fn record(
        &self,
        task: &TaskKey<'_>,
        action: &Action<'_>,
        span: SpanRef,
        _reserved: Option<Recorded>,
    ) -> Result<Recorded, Unavailable> {
        Ok(self.ledger.record_linked(task, action, span))
    }

    async fn settle(&self, task: &TaskKey<'_>, seqs: &[u64], outcome: Outcome) {
        for seq in seqs {
            self.ledger.settle(task, *seq, outcome);
        }
    }

    async fn revoke(&self, r: &Revocation, now: SystemTime) -> Result<Added, RevokeFailure> {
        Ok(self.state.revoke(r, now)?)
    }

    async fn revocations(&self, now: SystemTime) -> Result<Vec<Entry>, Unavailable> {
        Ok(self.state.revocations(now)?)
    }

    async fn is_revoked(&self, kind: Kind, id: &str, now: SystemTime) -> Result<bool, Unavailable> {
        Ok(self.state.is_revoked(kind, id, now)?)
    }

    async fn end(
        &self,
        end: End,
        bounds: EndBounds,
        now: SystemTime,
    ) -> Result<Stored<Ending>, EndFailure> {
        Ok(TaskStore::end(&self.state, end, bounds, now)?)
    }

    async fn ended(&self, id: &str, now: SystemTime) -> Result<Option<EndedView>, Unavailable> {
        Ok(TaskStore::ended(&self.state, id, now)?)
    }

    async fn ended_tasks(&self, now: SystemTime) -> Result<Vec<EndedTask>, Unavailable> {
        Ok(self.state.ended_tasks(now)?)
    }

    fn issued(&self, task: &str, credential: Issued, now: SystemTime) {
        TaskStore::issued(&self.state, task, credential, now);
    }

    fn issued_for(
        &self,
        tasks: &[&str],
        agents: &[&str],
        now: SystemTime,
    ) -> (Vec<(String, Issued)>, bool) {
        self.state.issued_for(tasks, agents, now)
    }

    async fn task(&self, id: &str) -> Result<Json, Unavailable> {
        Ok(self.ledger.describe(id))
    }

    async fn stats(&self) -> Result<Stats, Unavailable> {
        Ok(self.ledger.stats())
    }

    fn any_approved(&self) -> bool {
        self.state.any_approved()
    }

    async fn approved_head(&self, head: &Digest) -> Result<bool, Unavailable> {
        Ok(self.state.approved_head(head)?)
    }

    async fn approved(
        &self,
        digest: &Digest,
        now: SystemTime,
    ) -> Result<Option<Approval>, Unavailable> {
        Ok(ApprovalStore::approved(&self.state, digest, now)?)
    }

    async fn consume(
        &self,
        id: &str,
        decision_id: &str,
        now: SystemTime,
    ) -> Result<Stored<Option<Approval>>, Unavailable> {
        Ok(self.state.consume(id, decision_id, now)?)
    }

    async fn hold(
        &self,
        new: NewApproval,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Held>, ApprovalFailure> {
        Ok(self.state.hold(new, bounds, now)?)
    }

    async fn decide(
        &self,
        id: &str,
        approve: bool,
        verdict: &Verdict,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Stored<Approval>, ApprovalFailure> {
        Ok(self.state.decide(id, approve, verdict, bounds, now)?)
    }

    async fn approval(
        &self,
        id: &str,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Option<Approval>, Unavailable> {
        Ok(self.state.get(id, bounds, now)?)
    }

    async fn approvals(
        &self,
        bounds: Bounds,
        now: SystemTime,
    ) -> Result<Vec<Approval>, Unavailable> {
        Ok(self.state.list(bounds, now)?)
    }

    fn take_events(&self) -> Vec<Event> {
        self.state.take_events()
    }

    fn health(&self) -> Health {
        Health {
            backend: "memory",
            available: true,
            serves_degraded: false,
            problem: None,
        }
    }

    fn render_metrics(&self, out: &mut String) {
        self.metrics.render(out, "memory", true);
    }
}
