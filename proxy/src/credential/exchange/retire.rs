//! Tokens out of service: those a refresh replaced, the cache's bound pushed out or another
//! identity left behind, kept (bounded) until they expire so that they die with their task;
//! taking a task's tokens out of the cache when it ends ([`end_task`]); and the sweeper that
//! does so once a task's token has expired ([`sweep`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use toolgate_policy::config::SecretText;

use super::{Cached, Inner, Key, Slot, MAX_RETIRED};
use crate::credential::revocation::RevocationTarget;

/// A token taken out of service that may still be presented until it expires.
#[derive(Debug, Clone)]
pub struct Retired {
    pub token: SecretText,
    pub expires_at: Instant,
    /// `None` when its credential has no `revocation_endpoint`.
    pub revocation: Option<Arc<RevocationTarget>>,
}

impl Inner {
    /// Remember `cached` (of `task`) as retired, if it is still valid; bounded.
    pub(super) fn retire(&mut self, task: &str, cached: Cached, now: Instant) {
        if cached.expires_at <= now {
            return;
        }
        if self.retired.len() >= MAX_RETIRED {
            self.retired.retain(|(_, r)| r.expires_at > now);
        }
        if self.retired.len() >= MAX_RETIRED {
            self.retired.remove(0);
            tracing::warn!(target: "toolgate::credential", "more than {MAX_RETIRED} replaced exchanged tokens are still valid; the oldest is no longer remembered and will not be revoked when its task ends");
        }
        self.retired.push((
            task.to_string(),
            Retired {
                token: cached.token,
                expires_at: cached.expires_at,
                revocation: cached.revocation,
            },
        ));
    }

    /// Take slots whose key matches `which` out of the cache.
    pub(super) fn take(&mut self, which: impl Fn(&Key) -> bool) -> Vec<(String, Slot)> {
        let keys: Vec<Key> = self.slots.keys().filter(|k| which(k)).cloned().collect();
        keys.into_iter()
            .filter_map(|k| {
                let slot = self.slots.remove(&k)?;
                Some((k.task, slot))
            })
            .collect()
    }
}

/// [`Exchanges::end_task`] on `inner`.
pub(super) async fn end_task(inner: &Mutex<Inner>, task: Option<&str>) -> Vec<Retired> {
    let matches = |t: &str| task.is_none_or(|want| want == t);
    let now = Instant::now();
    let (slots, mut out) = {
        let Ok(mut inner) = inner.lock() else {
            return Vec::new();
        };
        inner.deadlines.retain(|t, _| !matches(t));
        let slots = inner.take(|k| matches(&k.task));
        let mut out = Vec::new();
        inner.retired.retain(|(t, r)| {
            if !matches(t) {
                return true;
            }
            if r.expires_at > now {
                out.push(r.clone());
            }
            false
        });
        (slots, out)
    };
    for (_, slot) in slots {
        // A request exchanging for the task right now finishes first.
        if let Some(c) = slot.lock().await.take() {
            if c.expires_at > now {
                out.push(Retired {
                    token: c.token,
                    expires_at: c.expires_at,
                    revocation: c.revocation,
                });
            }
        }
    }
    out
}

/// How often token expiries are checked.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Start the thread that, once a second, takes the tokens exchanged for tasks whose token
/// has expired out of service and revokes them at their STS: a task's credentials die with
/// its token, also when nobody asks for them again.
pub(super) fn sweep(inner: Arc<Mutex<Inner>>) {
    let spawned = std::thread::Builder::new()
        .name("toolgate-exchange-sweep".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!(target: "toolgate::credential", "cannot start the exchanged-token sweeper's runtime; tokens of expired tasks are revoked only when their task ends");
                return;
            };
            loop {
                std::thread::sleep(SWEEP_INTERVAL);
                let now = Instant::now();
                let expired: Vec<String> = match inner.lock() {
                    Ok(i) => i
                        .deadlines
                        .iter()
                        .filter(|(_, d)| **d <= now)
                        .map(|(t, _)| t.clone())
                        .collect(),
                    Err(_) => return,
                };
                for task in expired {
                    runtime.block_on(async {
                        let retired = end_task(&inner, Some(&task)).await;
                        if !retired.is_empty() {
                            tracing::info!(target: "toolgate::credential", %task, tokens = retired.len(), "the task's token expired: revoking the tokens exchanged for it");
                            crate::credential::revocation::revoke_all(retired).await;
                        }
                    });
                }
            }
        });
    if spawned.is_err() {
        tracing::error!(target: "toolgate::credential", "cannot start the exchanged-token sweeper; tokens of expired tasks are revoked only when their task ends");
    }
}
