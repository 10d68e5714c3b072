//! The gateway's loaded state: one validated config with its compiled policy and upstream
//! trust roots, swapped as a whole so a request sees one consistent version.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, WrappedX509};
use toolgate_policy::config::{Config, ConfigErrors, PolicySource};
use toolgate_policy::evaluate::{Policy, PolicyError};
use x509_parser::prelude::FromDer;

use crate::credential::{self, Exchanges, KeyRing};
use crate::record::{DecisionLog, Metrics, Spans};
use crate::state::StateStore;

/// Why a configuration could not become the serving one.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("tls.upstream_ca: {0}")]
    UpstreamCa(String),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("token exchange client: {0}")]
    Sts(String),
}

/// Everything derived from one configuration version.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub policy: Arc<Policy>,
    /// The shadow policy (`policy.shadow`): evaluated beside the live one on every request,
    /// never enforced.
    pub shadow: Option<Arc<Policy>>,
    /// Why `policy.shadow` could not be read or compiled, when it could not; `shadow` is then
    /// the last good one (on a reload) or none (at start).
    pub shadow_error: Option<String>,
    /// System roots plus `tls.upstream_ca`, when extra roots are configured.
    pub upstream_roots: Option<Arc<CaType>>,
    /// The interception CA (`tls.ca`), with its leaf cache.
    pub authority: Option<Arc<crate::ca::Authority>>,
    /// The HTTP client of token exchanges, when a credential needs one.
    pub sts: Option<reqwest::Client>,
}

impl Snapshot {
    /// Compile the policy and load trust roots for `config`. A shadow policy that cannot be
    /// read or compiled leaves `shadow` empty and says why in `shadow_error`.
    pub fn build(config: Config) -> Result<Snapshot, LoadError> {
        Snapshot::rebuild(config, None)
    }

    /// [`Snapshot::build`] `config` to replace `previous`: a policy (live or shadow) whose
    /// sources are unchanged is kept as it is, compiled and with its VMs warm, so live and
    /// shadow change independently; a shadow that cannot be read or compiled keeps the
    /// previous one and never stops the live policy from loading.
    pub fn rebuild(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, LoadError> {
        let policy = match previous.filter(|p| same_source(&p.policy, &config.policy)) {
            Some(p) => p.policy.clone(),
            None => Arc::new(Policy::compile(&config.policy)?),
        };
        let (shadow, shadow_error) = shadow(&config, previous);
        let upstream_roots = match &config.tls.upstream_ca {
            Some(path) => Some(upstream_roots(path)?),
            None => None,
        };
        let authority = match &config.tls.ca {
            Some(source) => Some(Arc::new(crate::ca::Authority::load(source)?)),
            None => None,
        };
        let sts = credential::exchange::client(&config).map_err(LoadError::Sts)?;
        Ok(Snapshot {
            config,
            policy,
            shadow,
            shadow_error,
            upstream_roots,
            authority,
            sts,
        })
    }
}

/// Whether `compiled` was compiled from `source` (same modules, data and query).
fn same_source(compiled: &Policy, source: &PolicySource) -> bool {
    compiled.revision() == toolgate_policy::evaluate::revision(source)
}

/// The shadow policy for `config`, and why the configured one is not it, if it is not.
fn shadow(config: &Config, previous: Option<&Snapshot>) -> (Option<Arc<Policy>>, Option<String>) {
    let Some(configured) = &config.shadow else {
        return (None, None);
    };
    let kept = previous.and_then(|p| p.shadow.clone());
    let source = match &configured.source {
        Ok(source) => source,
        Err(errors) => {
            let why = ConfigErrors {
                origin: config.origin.clone(),
                errors: errors.clone(),
            };
            return (kept, Some(why.to_string()));
        }
    };
    if let Some(same) = kept.as_ref().filter(|k| same_source(k, source)) {
        return (Some(same.clone()), None);
    }
    match Policy::compile(source) {
        Ok(policy) => (Some(Arc::new(policy)), None),
        Err(e) => (
            kept,
            Some(format!("{}: policy.shadow: {e}", config.origin.display())),
        ),
    }
}

/// System roots plus the PEM certificates in `extra`.
fn upstream_roots(extra: &Path) -> Result<Arc<CaType>, LoadError> {
    let pem = std::fs::read(extra)
        .map_err(|e| LoadError::UpstreamCa(format!("cannot read {}: {e}", extra.display())))?;
    let mut ders: Vec<Vec<u8>> = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = item.map_err(|e| LoadError::UpstreamCa(format!("{}: {e}", extra.display())))?;
        ders.push(cert.to_vec());
    }
    if ders.is_empty() {
        return Err(LoadError::UpstreamCa(format!(
            "{} holds no PEM certificate",
            extra.display()
        )));
    }
    // System roots that cannot be read are skipped: the extra roots still apply.
    if let Ok(system) = rustls_native_certs::load_native_certs() {
        ders.extend(system.into_iter().map(|c| c.to_vec()));
    }
    // pingora's WrappedX509 panics on DER it cannot parse: only hand it certificates that parse.
    let roots: Vec<WrappedX509> = ders
        .into_iter()
        .filter(|der| x509_parser::certificate::X509Certificate::from_der(der).is_ok())
        .map(|der| WrappedX509::new(der, parse_x509))
        .collect();
    Ok(Arc::from(roots.into_boxed_slice()))
}

/// The serving state: the current snapshot, replaced atomically on reload, and the state that
/// outlives reloads (task history, operator state, metrics, the decision log).
#[derive(Debug)]
pub struct Gateway {
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
    pub metrics: Metrics,
    /// Everything decisions depend on beyond the request — task chains and labels, agent
    /// labels, revocations, approvals, the default task — in the backend `state.backend`
    /// chose at start.
    pub store: Box<dyn StateStore>,
    /// Held requests' wake-ups and the approval webhook.
    pub approvals: crate::approval::Runtime,
    pub decision_log: DecisionLog,
    /// Where action spans are exported; `None` when export is off.
    pub spans: Option<Spans>,
    /// Public keys of minted credentials, current and recently rotated out.
    pub keys: KeyRing,
    /// Tokens obtained by token exchange, cached across requests and reloads.
    pub exchanges: Exchanges,
    /// MCP tool definitions seen in `tools/list` answers (first-sight pins), across reloads.
    pub definitions: toolgate_policy::classify::mcp::definition::Definitions,
}

impl Gateway {
    /// A gateway serving `snapshot`, logging decisions to `decision_log`, with the state
    /// `store` opened at start (chain bounds come from this first snapshot and change only on
    /// restart).
    pub fn new(
        snapshot: Snapshot,
        decision_log: DecisionLog,
        store: Box<dyn StateStore>,
    ) -> Gateway {
        let keys = KeyRing::default();
        keys.publish(&snapshot.config);
        let definitions = toolgate_policy::classify::mcp::definition::Definitions::new(
            snapshot.config.mcp.max_definitions,
        );
        Gateway {
            current: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            metrics: Metrics::default(),
            store,
            approvals: crate::approval::Runtime::default(),
            decision_log,
            spans: None,
            keys,
            exchanges: Exchanges::default(),
            definitions,
        }
    }

    /// The version a new request is served with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Serve `snapshot` from the next request on.
    pub fn replace(&self, snapshot: Snapshot) {
        self.keys.publish(&snapshot.config);
        self.current.store(Arc::new(snapshot));
    }

    /// Mark the gateway ready (listeners up, config and policy loaded).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200: listeners up, and the state backend answers (or
    /// requests are decided without it, `state.on_unavailable: local`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.store.health().ready()
    }
}
