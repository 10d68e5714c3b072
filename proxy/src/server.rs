//! Serving: the pingora server with the proxy and admin listeners, and its shutdown.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::accept::{ProxyListener, TransparentListener};
use crate::admin::Admin;
use crate::gateway::{Gateway, LoadError, Snapshot};
use crate::pipeline::Pipeline;
use crate::record::DecisionLog;
use crate::reload;

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
        // pingora waits this long after SIGTERM before stopping its runtimes (default 300 s).
        grace_period_seconds: Some(drain),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let decision_log = DecisionLog::start(&snapshot.config.telemetry.decision_log)
        .map_err(ServeError::DecisionLog)?;
    let gateway = Arc::new(Gateway::new(snapshot, decision_log));
    if let Some(path) = watch {
        reload::spawn(gateway.clone(), path).map_err(ServeError::Reload)?;
    }

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    // One pipeline for every listener; the proxy listener answers CONNECT itself and hands
    // everything else (and the decrypted requests of tunnels) to it.
    let http = Arc::new(http_proxy(
        &server.configuration,
        Pipeline::new(gateway.clone()),
    ));
    let mut proxy = Service::new(
        "toolgate proxy".to_string(),
        ProxyListener::new(http.clone(), gateway.clone()),
    );
    proxy.add_tcp(&listen.proxy.to_string());
    if let Some(addr) = listen.transparent {
        let mut transparent = Service::new(
            "toolgate transparent".to_string(),
            TransparentListener::new(http.clone(), gateway.clone()),
        );
        transparent.add_tcp(&addr.to_string());
        server.add_service(transparent);
    }
    let mut admin = Service::new("toolgate admin".to_string(), Admin::new(gateway.clone()));
    admin.threads = Some(1);
    admin.add_tcp(&listen.admin.to_string());
    server.add_service(proxy);
    server.add_service(admin);

    ready_when_listening(gateway.clone(), listen.proxy);
    let transparent = listen.transparent.map(|a| a.to_string());
    tracing::info!(proxy = %listen.proxy, transparent = transparent.as_deref().unwrap_or("-"), admin = %listen.admin, policy = gateway.snapshot().policy.revision(), "toolgate serving");
    server.run(RunArgs::default());
    tracing::info!("toolgate stopped");
    Ok(())
}
