//! The background loop of the Redis backend (every 250 ms: health, approvals' version, the
//! copies of revocations and ended tasks, the write-back after Redis lost its data) and the
//! revocations it copies.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use toolgate_policy::state::{rfc3339, Entry, Kind, CAPACITY};

use super::{describe, ms, Shared, OPERATOR_TIMEOUT, SYNC_EVERY};
use crate::state::{Op, Unavailable};

/// The versions of what the background loop copies, as last copied (`None`: copy now).
#[derive(Debug, Default)]
pub(super) struct Seen {
    revocations: Option<u64>,
    ended: Option<u64>,
}

impl Shared {
    /// The background loop: every [`SYNC_EVERY`], one pipeline of four reads.
    pub(super) async fn sync_forever(&self) {
        let mut seen = Seen::default();
        loop {
            match self.sync_once(&mut seen).await {
                Ok(()) => {
                    self.up();
                    if let Ok(mut p) = self.problem.lock() {
                        *p = None;
                    }
                }
                Err(e) => {
                    self.metrics.error(Op::Sync);
                    self.down(&e);
                }
            }
            tokio::time::sleep(SYNC_EVERY).await;
        }
    }

    pub(super) async fn sync_once(&self, seen: &mut Seen) -> Result<(), String> {
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.get(self.key(&["rv:ver"]))
            .get(self.key(&["ap:ver"]))
            .get(self.key(&["ap:n"]))
            .get(self.key(&["epoch"]))
            .get(self.key(&["te:ver"]));
        let read = pipe.query_async::<(
            Option<u64>,
            Option<u64>,
            Option<i64>,
            Option<u64>,
            Option<u64>,
        )>(&mut conn);
        let (revocations, approvals, approved, epoch, ended) =
            match tokio::time::timeout(OPERATOR_TIMEOUT, read).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(describe(&e)),
                Err(_) => return Err("redis did not answer the health check within 1s".into()),
            };
        self.approved.store(
            approved.unwrap_or(0).max(0).unsigned_abs(),
            Ordering::Release,
        );
        self.approvals_version
            .store(approvals.unwrap_or(0), Ordering::Release);
        let now = SystemTime::now();
        if epoch.is_none() {
            // A fresh (or flushed, or restarted without persistence) Redis: what this replica
            // copied is written back, so no revocation or end lapses with the data set.
            let copied = self.local.state.revocations(now).unwrap_or_default();
            for entry in &copied {
                let expires = toolgate_policy::state::parse_rfc3339(&entry.expires);
                if let Some(expires) = expires {
                    self.revoke_until(entry.kind, &entry.id, expires, now)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            let ends = self.write_back_ended(now).await?;
            let _: () = redis::cmd("SET")
                .arg(self.key(&["epoch"]))
                .arg(ms(now))
                .arg("NX")
                .query_async(&mut conn)
                .await
                .map_err(|e| describe(&e))?;
            if !copied.is_empty() || ends > 0 {
                tracing::warn!(target: "toolgate::state", revocations = copied.len(), ended_tasks = ends, "redis had no data; wrote back the revocations and ended tasks this replica holds");
            }
            *seen = Seen::default();
            return Ok(());
        }
        if revocations != seen.revocations || seen.revocations.is_none() {
            self.copy_revocations(now).await?;
            seen.revocations = revocations.or(Some(0));
        }
        if ended != seen.ended || seen.ended.is_none() {
            self.copy_ended(now).await?;
            seen.ended = ended.or(Some(0));
        }
        Ok(())
    }

    /// Copy every revocation in force into the local view.
    pub(super) async fn copy_revocations(&self, now: SystemTime) -> Result<(), String> {
        let list = self
            .list_revocations(now)
            .await
            .map_err(|e| e.to_string())?;
        let entries = list.into_iter().filter_map(|e| {
            toolgate_policy::state::parse_rfc3339(&e.expires).map(|x| (e.kind, e.id, x))
        });
        self.local
            .state
            .mirror_revocations(entries, now)
            .map_err(|e| e.to_string())
    }

    pub(super) async fn list_revocations(
        &self,
        now: SystemTime,
    ) -> Result<Vec<Entry>, Unavailable> {
        let now_s = ms(now) / 1000;
        let mut pipe = redis::pipe();
        for kind in Kind::ALL {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.key(&["rv:", kind.as_str()]))
                .arg(format!("({now_s}"))
                .arg("+inf")
                .arg("WITHSCORES");
        }
        let mut conn = self.conn();
        let rooms: Vec<Vec<(String, f64)>> = self
            .run(
                Op::Operator,
                self.settings.timeout.max(OPERATOR_TIMEOUT),
                pipe.query_async(&mut conn),
            )
            .await?;
        let mut all: Vec<Entry> = Kind::ALL
            .into_iter()
            .zip(rooms)
            .flat_map(|(kind, room)| {
                room.into_iter().map(move |(id, expires)| Entry {
                    kind,
                    id,
                    expires: rfc3339(expires as u64),
                })
            })
            .collect();
        all.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        Ok(all)
    }

    pub(super) async fn revoke_until(
        &self,
        kind: Kind,
        id: &str,
        expires: u64,
        now: SystemTime,
    ) -> Result<(i64, u64), Unavailable> {
        let mut conn = self.conn();
        let mut call = self.scripts.revoke.prepare_invoke();
        call.key(self.key(&["rv:", kind.as_str()]))
            .key(self.key(&["rv:ver"]))
            .arg(id)
            .arg(expires)
            .arg(ms(now) / 1000)
            .arg(CAPACITY);
        let (status, kept): (i64, f64) = self
            .run(
                Op::Operator,
                self.settings.timeout.max(OPERATOR_TIMEOUT),
                call.invoke_async(&mut conn),
            )
            .await?;
        Ok((status, kept as u64))
    }
}
