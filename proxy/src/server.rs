//! Serving: the pingora server with the proxy, admin and operator listeners, and its shutdown.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::listening::Service;
use toolgate_policy::config::{ProcessEnv, Vars};
use toolgate_policy::state::{FileError, State};

use crate::accept::gate;
use crate::accept::{Front, Gate, HeadRead, ProxyListener, TransparentListener};
use crate::admin::Admin;
use crate::gateway::{Gateway, LoadError, Snapshot};
use crate::operator::Listener;
use crate::pipeline::Pipeline;
use crate::record::export::{otlp, StartError};
use crate::record::DecisionLog;
use crate::reload;

/// How long pending spans may take to export once the server has stopped. Kubernetes'
/// termination grace period (the Helm chart's) leaves 2 s beyond toolgate's drain.
pub const SPAN_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why toolgate could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{field} {addr}: cannot listen: {source}")]
    Listen {
        field: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("telemetry.decision_log: {0}")]
    DecisionLog(#[source] std::io::Error),
    #[error("cannot start the reloader: {0}")]
    Reload(#[source] std::io::Error),
    #[error("telemetry.otlp: {0}")]
    Telemetry(#[from] StartError),
    #[error(transparent)]
    State(#[from] FileError),
    #[error("listen.operator: {path}: {problem}")]
    Socket { path: PathBuf, problem: String },
}

/// Stops a server started with [`serve_with`] at once, from any thread.
#[derive(Debug, Clone, Default)]
pub struct Stopper(Arc<tokio::sync::Notify>);

impl Stopper {
    /// Ask the server to stop; it may not have started waiting yet (the request is kept).
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

/// pingora's shutdown signal for a [`Stopper`]: a graceful terminate with no grace period
/// (`serve_with` sets it to 0). pingora 0.9.1's fast shutdown stops the runtimes without
/// telling the accept loops; an accept loop polled after its runtime's I/O driver is gone
/// gets an error back at once, logs it and retries without ever yielding, so the runtime's
/// thread never ends and the process hangs joining it. The graceful path ends the accept
/// loops first.
struct StopWatch(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::GracefulTerminate
    }
}

/// The admin app behind the gate's admin room: when it is full, the oldest connection closes,
/// so connections the agent opens to the admin port cannot keep a probe out.
struct AdminListener {
    app: Arc<Admin>,
    gate: Arc<Gate>,
    gateway: Arc<Gateway>,
}

#[async_trait]
impl ServerApp for AdminListener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ticket = self.gate.admit_admin(&self.gateway.metrics);
        tokio::select! {
            _ = ServerApp::process_new(&self.app, stream, shutdown) => None,
            _ = ticket.evicted() => None,
        }
    }
}

/// Raise the open-file limit to the hard limit, saying what it became; `None`: unlimited.
fn open_files() -> Option<u64> {
    match gate::raise_open_files() {
        Ok(files) if files.before != files.now => {
            tracing::info!(from = ?files.before, to = ?files.now, "raised the open-file limit (RLIMIT_NOFILE) to the hard limit");
            files.now
        }
        Ok(files) => files.now,
        Err(e) => {
            let now = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
            tracing::warn!(limit = ?now, error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
            now
        }
    }
}

/// Give memory freed by closed connections back to the system, once a second, until the flag
/// returned is cleared.
///
/// mimalloc (the binary's allocator) returns freed memory to the OS only after a delay
/// (`purge_delay`, 1 s) and only when some allocator call checks for due purges. Worker threads
/// that fall idle after a flood of connections make no such call, and the process kept the
/// flood's peak (+50 MiB after 300 heads of 60 KB) for good. Freeing a block too large for
/// any page (a huge block) frees its pages to the arenas, which runs that check for the whole
/// process. The block is reserved, never touched: it costs no resident memory. (`mi_collect`
/// would do the same, at the price of unsafe FFI; tests/limits.rs measures that RSS falls.)
fn reclaim_freed_memory() -> Arc<AtomicBool> {
    const NUDGE_BYTES: usize = 8 << 20;
    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let spawned = std::thread::Builder::new()
        .name("toolgate-reclaim".into())
        .spawn(move || {
            while flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let block: Vec<u8> = Vec::with_capacity(std::hint::black_box(NUDGE_BYTES));
                drop(std::hint::black_box(block));
            }
        });
    if spawned.is_err() {
        tracing::warn!("cannot start the memory reclaimer; freed memory may stay resident");
    }
    running
}

/// Check that `addr` can be bound, so a taken port fails with a clear message before start.
fn probe(field: &'static str, addr: SocketAddr) -> Result<(), ServeError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| ServeError::Listen {
            field,
            addr,
            source,
        })
}

/// `[::1]:PORT` beside a `127.0.0.1:PORT` transparent listener, when the pod has IPv6
/// loopback: `toolgate init-iptables` redirects the agent's IPv6 connections there.
fn ipv6_companion(addr: SocketAddr) -> Option<SocketAddr> {
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()));
    let loopback_v4 = addr.ip() == std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
    (loopback_v4 && TcpListener::bind(v6).is_ok()).then_some(v6)
}

/// Judge where the operator socket at `path` would live, as `toolgate run` and `toolgate
/// check` both do. `Err` (refuse): its directory is missing; the directory is a shared
/// temporary directory (writable by every user, with the sticky bit, like /tmp), which any
/// local user — the agent — reaches; or something that is not a socket is at the path.
/// `Ok(Some(note))`: the directory can be written by other users — safe only where the
/// agent cannot reach it at all, like an emptyDir mounted into toolgate's container alone
/// (Kubernetes creates those world-writable).
pub fn check_socket(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mode = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m.mode(),
        _ => {
            return Err(format!(
                "its directory {} does not exist: create it on a volume only toolgate's container mounts",
                dir.display()
            ))
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err("exists and is not a socket; toolgate will not replace it".into())
        }
        _ => {}
    }
    if mode & 0o002 != 0 && mode & 0o1000 != 0 {
        return Err(format!(
            "{} is a directory every local user can write (mode {:o}): the agent could reach or squat the socket; use a directory only toolgate's user can write, on a volume the agent does not mount",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok((mode & 0o022 != 0).then(|| {
        format!(
            "{} can be written by other users (mode {:o}); keep it on a volume the agent's container does not mount",
            dir.display(),
            mode & 0o7777
        )
    }))
}

/// Make way for the operator socket at `path` (see [`check_socket`]): a stale socket left by
/// an earlier run is removed; a live one is left alone and refuses the start.
fn prepare_socket(path: &Path) -> Result<(), ServeError> {
    let fail = |problem: String| ServeError::Socket {
        path: path.to_path_buf(),
        problem,
    };
    if let Some(note) = check_socket(path).map_err(fail)? {
        tracing::warn!("listen.operator: {note}");
    }
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(fail(
            "another process is serving on this socket (a toolgate already running?)".into(),
        ));
    }
    std::fs::remove_file(path).map_err(|e| fail(format!("cannot remove the stale socket: {e}")))
}

/// Mark the gateway ready once the proxy listener accepts connections: pingora binds its
/// listeners inside `run`, and an agent started on `/readyz` must not find the port closed.
fn ready_when_listening(gateway: Arc<Gateway>, proxy: SocketAddr) {
    let target = match proxy.ip() {
        ip if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], proxy.port())),
        _ => proxy,
    };
    let spawned = std::thread::Builder::new()
        .name("toolgate-ready".into())
        .spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                let probe = std::time::Duration::from_millis(200);
                if std::net::TcpStream::connect_timeout(&target, probe).is_ok() {
                    gateway.set_ready(true);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            tracing::error!(%proxy, "the proxy listener did not start; staying unready");
        });
    if spawned.is_err() {
        tracing::error!("cannot start the readiness probe; staying unready");
    }
}

/// Serve `snapshot` until SIGTERM (graceful: stop accepting, drain for
/// `limits.shutdown_timeout`) or SIGINT (immediate). With `watch`, the configuration file it
/// came from is reloaded when it or anything it references changes, and on SIGHUP.
pub fn serve(snapshot: Snapshot, watch: Option<PathBuf>) -> Result<(), ServeError> {
    serve_with(snapshot, watch, None, &ProcessEnv)
}

/// [`serve`], stopped by `stopper` instead of signals when given, reading the standard
/// OpenTelemetry environment (`OTEL_*`) through `vars`.
pub fn serve_with(
    snapshot: Snapshot,
    watch: Option<PathBuf>,
    stopper: Option<Stopper>,
    vars: &dyn Vars,
) -> Result<(), ServeError> {
    let listen = snapshot.config.listen.clone();
    probe("listen.proxy", listen.proxy)?;
    probe("listen.admin", listen.admin)?;
    if let Some(addr) = listen.transparent {
        probe("listen.transparent", addr)?;
    }

    let drain = snapshot.config.limits.shutdown_timeout.as_secs().max(1);
    let conf = ServerConf {
        threads: snapshot.config.workers,
        // One runtime per worker thread: no cross-thread task stealing and wake-ups.
        work_stealing: false,
        // pingora waits this long after SIGTERM before stopping its runtimes (default 300 s);
        // a Stopper stops at once.
        grace_period_seconds: Some(if stopper.is_some() { 0 } else { drain }),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let decision_log = DecisionLog::start(&snapshot.config.telemetry.decision_log)
        .map_err(ServeError::DecisionLog)?;
    let export = otlp::settings(snapshot.config.telemetry.otlp.as_ref(), vars)?;
    let resource = otlp::resource(&snapshot.config.agent.id, vars);
    let state = State::open(&snapshot.config.state, SystemTime::now())?;
    match state.path() {
        Some(path) => tracing::info!(file = %path.display(), revocations = state.revocations(SystemTime::now()).map(|r| r.len()).unwrap_or(0), "operator state kept in a file"),
        None => tracing::warn!("state.dir is not set: revocations are kept in memory only and do not survive a restart"),
    }
    let socket = listen.operator.clone();
    if let Some(path) = &socket {
        prepare_socket(path)?;
    }
    let mut gateway = Gateway::new(snapshot, decision_log, state);
    if let Some(settings) = &export {
        let spans = otlp::start(settings, resource, gateway.metrics.spans_dropped())?;
        tracing::info!(destination = %spans.destination, "exporting spans");
        gateway.spans = Some(spans);
    }
    let gateway = Arc::new(gateway);
    if let Some(path) = watch {
        reload::spawn(gateway.clone(), path).map_err(ServeError::Reload)?;
    }

    let gate = Arc::new(Gate::new(gateway.metrics.load.clone(), open_files()));
    let max_connections = gateway.snapshot().config.limits.max_connections;
    if gate.room() < max_connections {
        tracing::warn!(
            "limits.max_connections is {max_connections}, but the open-file limit leaves room for {} agent connections ({} descriptors reserved, two per connection): at most {} are admitted",
            gate.room(),
            gate::RESERVED_FDS,
            gate.room()
        );
    }

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    // One pipeline for every listener; the proxy listener answers CONNECT itself and hands
    // everything else (and the decrypted requests of tunnels) to it.
    let mut http = http_proxy(&server.configuration, Pipeline::new(gateway.clone()));
    // Tells the guard of each connection when pingora has parsed a request head.
    http.downstream_modules.add_module(Box::new(HeadRead));
    let front = Front::new(Arc::new(http), gateway.clone(), gate.clone());
    let mut proxy = Service::new(
        "toolgate proxy".to_string(),
        ProxyListener::new(front.clone()),
    );
    proxy.add_tcp(&listen.proxy.to_string());
    if let Some(addr) = listen.transparent {
        let mut transparent = Service::new(
            "toolgate transparent".to_string(),
            TransparentListener::new(front.clone()),
        );
        transparent.add_tcp(&addr.to_string());
        if let Some(v6) = ipv6_companion(addr) {
            transparent.add_tcp(&v6.to_string());
        }
        server.add_service(transparent);
    }
    let mut admin = Service::new(
        "toolgate admin".to_string(),
        AdminListener {
            app: Arc::new(Admin::new(gateway.clone(), Listener::Admin)),
            gate,
            gateway: gateway.clone(),
        },
    );
    admin.threads = Some(1);
    admin.add_tcp(&listen.admin.to_string());
    server.add_service(proxy);
    server.add_service(admin);
    if let Some(path) = &socket {
        let mut operator = Service::new(
            "toolgate operator".to_string(),
            Admin::new(gateway.clone(), Listener::Socket),
        );
        operator.threads = Some(1);
        // The config checked that the path is UTF-8.
        operator.add_uds(
            &path.to_string_lossy(),
            Some(std::fs::Permissions::from_mode(0o600)),
        );
        server.add_service(operator);
    }
    let token = gateway.snapshot().config.admin.token.is_some();
    let operator = match (&socket, token) {
        (Some(path), true) => format!(
            "socket {} and admin listener, bearer token required on both",
            path.display()
        ),
        (Some(path), false) => format!(
            "socket {} only (no admin.token_file: off on the admin listener)",
            path.display()
        ),
        (None, true) => "admin listener, bearer token required".to_string(),
        (None, false) => "off (set admin.token_file and/or listen.operator)".to_string(),
    };
    tracing::info!(%operator, "operator API");

    ready_when_listening(gateway.clone(), listen.proxy);
    let reclaiming = reclaim_freed_memory();
    let transparent = listen.transparent.map(|a| a.to_string());
    tracing::info!(proxy = %listen.proxy, transparent = transparent.as_deref().unwrap_or("-"), admin = %listen.admin, policy = gateway.snapshot().policy.revision(), "toolgate serving");
    let args = match stopper {
        Some(s) => RunArgs {
            shutdown_signal: Box::new(StopWatch(s.0)),
        },
        None => RunArgs::default(),
    };
    server.run(args);
    reclaiming.store(false, Ordering::Relaxed);
    gateway.set_ready(false);
    if let Some(path) = &socket {
        let _ = std::fs::remove_file(path);
    }
    if let Some(spans) = &gateway.spans {
        // pingora's runtimes are gone; the exporter's own runtime sends what is left.
        let before = spans.dropped();
        let finished = spans.shutdown(SPAN_FLUSH_TIMEOUT);
        let lost = spans.dropped().saturating_sub(before);
        if !finished || lost > 0 {
            tracing::warn!(
                lost,
                "spans still pending at shutdown were not all exported"
            );
        }
    }
    tracing::info!("toolgate stopped");
    Ok(())
}
