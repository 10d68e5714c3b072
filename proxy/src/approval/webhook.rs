//! The approval webhook (`approvals.webhook`): a JSON POST when an approval is requested and
//! when it is decided (and when it expires or is used), off the request path. Deliveries run
//! on a thread of their own with a small runtime, each attempt bounded by the webhook's
//! timeout, retried with exponential backoff (250 ms, 500 ms, 1 s, …). A failure is logged and
//! counted (`toolgate_approval_webhooks_total{result="failed"}`) and changes nothing: a
//! webhook never approves anything. At most [`QUEUE`] deliveries wait; beyond, new ones are
//! dropped and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value as Json;
use toolgate_policy::config::Webhook;

use crate::record::Metrics;

/// Deliveries that may wait for the sender.
pub const QUEUE: usize = 1024;
/// Deliveries in flight at once.
pub const IN_FLIGHT: usize = 16;
/// Backoff before the first retry; doubled for each next one.
pub const BACKOFF: Duration = Duration::from_millis(250);

/// Delivery counts, shared with the metrics.
#[derive(Debug, Default)]
pub struct Counts {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

struct Job {
    url: String,
    origin: String,
    timeout: Duration,
    retries: u32,
    body: Vec<u8>,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The webhook sender: started on its first delivery.
#[derive(Debug, Default)]
pub struct Sender {
    tx: OnceLock<Option<tokio::sync::mpsc::Sender<Job>>>,
}

impl Sender {
    /// Queue `payload` for `hook`; never blocks.
    pub fn send(&self, hook: &Webhook, payload: Json, metrics: &Metrics) {
        let counts = metrics.webhook_counts();
        let job = Job {
            url: hook.url.expose().to_string(),
            origin: hook.origin.clone(),
            timeout: hook.timeout,
            retries: hook.retries,
            body: serde_json::to_vec(&payload).unwrap_or_default(),
            counts: counts.clone(),
        };
        let tx = self.tx.get_or_init(start);
        let queued = tx
            .as_ref()
            .map(|tx| tx.try_send(job).is_ok())
            .unwrap_or(false);
        if !queued {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "toolgate::approvals", origin = %hook.origin, "approval webhook delivery dropped: the queue is full or the sender is not running");
        }
    }
}

fn start() -> Option<tokio::sync::mpsc::Sender<Job>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(QUEUE);
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target: "toolgate::approvals", "cannot build the approval webhook client: {e}");
            return None;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("toolgate-approval-webhook".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!(target: "toolgate::approvals", "cannot start the approval webhook's runtime");
                return;
            };
            runtime.block_on(async move {
                let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
                while let Some(job) = rx.recv().await {
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let client = client.clone();
                    tokio::spawn(async move {
                        deliver(&client, job).await;
                        drop(slot);
                    });
                }
            });
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(target: "toolgate::approvals", "cannot start the approval webhook thread: {e}");
            None
        }
    }
}

fn client() -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false);
    if let Ok(system) = rustls_native_certs::load_native_certs() {
        for der in system {
            if let Ok(cert) = reqwest::Certificate::from_der(&der) {
                builder = builder.add_root_certificate(cert);
            }
        }
    }
    builder.build().map_err(|e| e.to_string())
}

async fn deliver(client: &reqwest::Client, job: Job) {
    let mut last = String::new();
    for attempt in 0..=job.retries {
        if attempt > 0 {
            let backoff = BACKOFF.saturating_mul(1 << (attempt - 1).min(6));
            tokio::time::sleep(backoff).await;
        }
        let sent = client
            .post(&job.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .timeout(job.timeout)
            .body(job.body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                job.counts.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) => last = format!("answered {}", r.status().as_u16()),
            // Never the URL: it may be a secret (reqwest's errors include it).
            Err(e) if e.is_timeout() => last = format!("no answer within {:?}", job.timeout),
            Err(e) if e.is_connect() => last = "cannot connect".to_string(),
            Err(_) => last = "the request failed".to_string(),
        }
    }
    job.counts.failed.fetch_add(1, Ordering::Relaxed);
    tracing::error!(target: "toolgate::approvals", origin = %job.origin, attempts = job.retries + 1, "approval webhook failed: {last}");
}
