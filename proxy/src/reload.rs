//! Hot reload: configuration, policy, data and secret files are re-read every second and on
//! SIGHUP; a changed version is compiled on this thread, off the request path, and swapped in
//! atomically. A broken version is rejected, logged once, counted, and the last good version
//! keeps serving. In-flight requests finish on the version they started with. The shadow
//! policy (`policy.shadow`) swaps on its own: a broken shadow keeps its last good version and
//! never holds back the rest; a policy whose sources did not change is not recompiled.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use toolgate_policy::config::Config;

use crate::gateway::{Gateway, Snapshot};

/// How often files are checked for changes.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Start watching `path` for `gateway`.
pub fn spawn(gateway: Arc<Gateway>, path: PathBuf) -> std::io::Result<()> {
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    std::thread::Builder::new()
        .name("toolgate-reload".into())
        .spawn(move || {
            let mut last_failure: Option<String> = None;
            let mut next = Instant::now() + INTERVAL;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let forced = hup.swap(false, Ordering::Relaxed);
                if !forced && Instant::now() < next {
                    continue;
                }
                next = Instant::now() + INTERVAL;
                attempt(&gateway, &path, forced, &mut last_failure);
            }
        })?;
    Ok(())
}

/// Load `path`; swap it in if it differs from what is serving and compiles.
fn attempt(gateway: &Gateway, path: &Path, forced: bool, last_failure: &mut Option<String>) {
    let current = gateway.snapshot();
    let failed = |message: String, last_failure: &mut Option<String>| {
        // A broken file stays broken across polls: report each broken version once.
        if last_failure.as_deref() != Some(message.as_str()) {
            tracing::error!(target: "toolgate::reload", error = %message, "new configuration rejected; the last good one keeps serving");
            gateway.metrics.policy_reload("failure");
            *last_failure = Some(message);
        }
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => return failed(errors.to_string(), last_failure),
    };
    if config.fingerprint == current.config.fingerprint {
        if forced {
            tracing::info!(target: "toolgate::reload", "SIGHUP: configuration unchanged");
        }
        *last_failure = None;
        return;
    }
    if config.listen.proxy != current.config.listen.proxy
        || config.listen.admin != current.config.listen.admin
        || config.listen.transparent != current.config.listen.transparent
        || config.listen.operator != current.config.listen.operator
        || config.state != current.config.state
        || config.workers != current.config.workers
    {
        tracing::warn!(target: "toolgate::reload", "listen addresses (the operator socket included), state and workers change only on restart");
    }
    let origin = config.origin.clone();
    match Snapshot::rebuild(config, Some(&current)) {
        Ok(snapshot) => {
            let revision = snapshot.policy.revision().to_string();
            let shadow = snapshot.shadow.as_ref().map(|s| s.revision().to_string());
            if let Some(why) = &snapshot.shadow_error {
                // The live policy loads; the shadow keeps its last good version.
                tracing::error!(target: "toolgate::reload", error = %why, shadow = shadow.as_deref().unwrap_or("-"), "new shadow policy rejected; the last good shadow keeps running");
                gateway.metrics.policy_reload("shadow_failure");
            }
            gateway.replace(snapshot);
            gateway.metrics.policy_reload("success");
            *last_failure = None;
            tracing::info!(target: "toolgate::reload", policy = %revision, shadow = shadow.as_deref().unwrap_or("-"), "configuration reloaded");
        }
        Err(e) => failed(format!("{}: {e}", origin.display()), last_failure),
    }
}
