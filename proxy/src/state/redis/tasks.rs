//! The end of a task in Redis, shared by every replica: a hash of ends
//! (`<prefix>:te`, task id → `<until s>\t<end JSON>`), the same ends by until (`te:u`, to drop
//! expired ones when the room is full), the chain copies (`tec:<id>`, expiring with the end,
//! at most `chain.max_tasks` of them by order `te:c`) and a version (`te:ver`) the background
//! loop watches to copy the ends into the local view. Bounds as in memory: at most
//! [`CAPACITY`] ends, never one dropped within its retention. The issued-credential index
//! stays per replica (each lists what it issued).

use std::time::SystemTime;

use serde_json::Value as Json;
use toolgate_policy::state::tasks::{note, CAPACITY};
use toolgate_policy::state::{
    parse_rfc3339, rfc3339, End, EndBounds, EndError, EndedTask, EndedView, Ending, Kind, Stored,
    TaskStore,
};

use super::{ms, Shared, OPERATOR_TIMEOUT};
use crate::state::{EndFailure, Op, Unavailable};

/// An end as Redis holds it (`<until s>\t<end JSON>`); `None` when it does not parse.
pub(super) fn ended_of(held: &str) -> Option<(u64, EndedTask)> {
    let (until, json) = held.split_once('\t')?;
    Some((until.parse().ok()?, serde_json::from_str(json).ok()?))
}

impl Shared {
    fn operator_limit(&self) -> std::time::Duration {
        self.settings.timeout.max(OPERATOR_TIMEOUT)
    }

    /// Hold `task` as ended until `until` (seconds) with its `chain` copy; what Redis holds
    /// for it afterwards and whether it ended now.
    async fn end_until(
        &self,
        task: EndedTask,
        chain: Option<&Json>,
        keep_chains: usize,
        until: u64,
        now: SystemTime,
    ) -> Result<(EndedTask, bool), EndFailure> {
        let now_s = ms(now) / 1000;
        let json = serde_json::to_string(&task).unwrap_or_default();
        let chain = chain
            .map(|c| serde_json::to_string(c).unwrap_or_default())
            .unwrap_or_default();
        let mut conn = self.conn();
        let mut call = self.scripts.end.prepare_invoke();
        call.key(self.key(&["te"]))
            .key(self.key(&["te:u"]))
            .key(self.key(&["te:c"]))
            .key(self.key(&["tec:", &task.id]))
            .key(self.key(&["te:ver"]))
            .arg(&task.id)
            .arg(now_s)
            .arg(until)
            .arg(json)
            .arg(chain)
            .arg(keep_chains)
            .arg(CAPACITY)
            .arg(&self.prefix);
        let (status, held): (i64, Option<String>) = self
            .run(
                Op::Operator,
                self.operator_limit(),
                call.invoke_async(&mut conn),
            )
            .await?;
        if status == 2 {
            return Err(EndFailure::Refused(EndError::Full));
        }
        let ended = held.as_deref().and_then(ended_of).map_or(task, |(_, t)| t);
        Ok((ended, status == 1))
    }

    pub(super) async fn end(
        &self,
        end: End,
        bounds: EndBounds,
        now: SystemTime,
    ) -> Result<Stored<Ending>, EndFailure> {
        let until = (ms(now) / 1000)
            .checked_add(bounds.retention.as_secs().max(1))
            .filter(|u| *u < u64::MAX / 1000)
            .ok_or(EndFailure::Refused(EndError::Overflow))?;
        let now_s = ms(now) / 1000;
        let task = EndedTask {
            id: end.task.clone(),
            at: rfc3339(now_s),
            by: note(&end.by),
            reason: end.reason.as_deref().map(note),
            until: rfc3339(until),
        };
        let (ended, changed) = self
            .end_until(task, end.chain.as_ref(), bounds.keep_chains, until, now)
            .await?;
        // Copied at once too: this replica refuses the task even if Redis goes away now.
        let _ = self.copy_ended(now).await;
        let (credentials, _) = self.local.state.issued_for(&[ended.id.as_str()], &[], now);
        Ok(Stored {
            value: Ending {
                ended,
                changed,
                credentials: credentials.into_iter().map(|(_, c)| c).collect(),
            },
            unsaved: None,
        })
    }

    pub(super) async fn ended(
        &self,
        id: &str,
        now: SystemTime,
    ) -> Result<Option<EndedView>, Unavailable> {
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.hget(self.key(&["te"]), id)
            .get(self.key(&["tec:", id]));
        let read = pipe.query_async::<(Option<String>, Option<String>)>(&mut conn);
        let (held, chain) = self.run(Op::Operator, self.operator_limit(), read).await?;
        let now_s = ms(now) / 1000;
        Ok(held
            .as_deref()
            .and_then(ended_of)
            .filter(|(until, _)| *until > now_s)
            .map(|(_, task)| EndedView {
                task,
                chain: chain.and_then(|c| serde_json::from_str::<Json>(&c).ok()),
            }))
    }

    pub(super) async fn ended_tasks(&self, now: SystemTime) -> Result<Vec<EndedTask>, Unavailable> {
        let mut conn = self.conn();
        let mut cmd = redis::cmd("HVALS");
        cmd.arg(self.key(&["te"]));
        let read = cmd.query_async::<Vec<String>>(&mut conn);
        let all = self.run(Op::Operator, self.operator_limit(), read).await?;
        let now_s = ms(now) / 1000;
        let mut out: Vec<EndedTask> = all
            .iter()
            .filter_map(|h| ended_of(h))
            .filter(|(until, _)| *until > now_s)
            .map(|(_, t)| t)
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Copy every end in force into the local view.
    pub(super) async fn copy_ended(&self, now: SystemTime) -> Result<(), String> {
        let all = self.ended_tasks(now).await.map_err(|e| e.to_string())?;
        self.local
            .state
            .mirror_ended(all, now)
            .map_err(|e| e.to_string())
    }

    /// Write back the ends this replica copied (after Redis lost its data).
    pub(super) async fn write_back_ended(&self, now: SystemTime) -> Result<usize, String> {
        let copied = self.local.state.ended_tasks(now).unwrap_or_default();
        for task in &copied {
            let Some(until) = parse_rfc3339(&task.until) else {
                continue;
            };
            self.end_until(task.clone(), None, 0, until, now)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(copied.len())
    }

    pub(super) async fn is_revoked(
        &self,
        kind: Kind,
        id: &str,
        now: SystemTime,
    ) -> Result<bool, Unavailable> {
        let mut conn = self.conn();
        let mut cmd = redis::cmd("ZSCORE");
        cmd.arg(self.key(&["rv:", kind.as_str()])).arg(id);
        let read = cmd.query_async::<Option<f64>>(&mut conn);
        let score = self.run(Op::Operator, self.operator_limit(), read).await?;
        Ok(score.is_some_and(|expires| expires > (ms(now) / 1000) as f64))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_end_reads_back_and_garbage_does_not() {
        let task = EndedTask {
            id: "T-1".into(),
            at: rfc3339(1_800_000_000),
            by: "orchestrator".into(),
            reason: Some("done\twith tabs".into()),
            until: rfc3339(1_800_086_400),
        };
        let held = format!("1800086400\t{}", serde_json::to_string(&task).unwrap());
        assert_eq!(ended_of(&held), Some((1_800_086_400, task)));
        assert_eq!(ended_of("no tab"), None);
        assert_eq!(ended_of("12\t{\"id\":\"x\"}"), None);
        assert_eq!(ended_of("x\t{}"), None);
    }
}
