//! The load bench's "bare pingora" row: the smallest pingora forward proxy that serves what
//! the toolgate rows serve — absolute-form requests (`GET http://localhost/items/42`, what
//! `HTTP_PROXY` clients send) forwarded in origin form to one fixed HTTP/1 upstream over
//! pooled connections — with toolgate's server settings (one runtime per worker, no work
//! stealing) and nothing else: no policy, no credential, no spans. It is the stack's own
//! ceiling, so the distance from a toolgate row to it is what toolgate adds.
//!
//!   cargo build --release -p toolgate-proxy --example bare_pingora
//!   target/release/examples/bare_pingora LISTEN UPSTREAM WORKERS
//!
//! Run by benches/load/bench.py; not part of toolgate.

use std::net::SocketAddr;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};

struct Forward {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        // Upstream connections pooled per worker thread, as toolgate pools them
        // (vendor/pingora-core/TOOLGATE.md).
        peer.group_key = toolgate_proxy::forward::worker_slot();
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _: &mut Session,
        req: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        // Absolute form → origin form, as toolgate forwards it.
        if req.uri.authority().is_some() {
            let origin = req
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".to_string());
            if let Ok(uri) = origin.parse() {
                req.set_uri(uri);
            }
        }
        Ok(())
    }
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_pingora LISTEN UPSTREAM WORKERS";
    let listen = args.next().ok_or(usage)?;
    let upstream: SocketAddr = args
        .next()
        .ok_or(usage)?
        .parse()
        .map_err(|e| format!("UPSTREAM: {e}"))?;
    let workers: usize = args
        .next()
        .ok_or(usage)?
        .parse()
        .map_err(|e| format!("WORKERS: {e}"))?;
    let conf = ServerConf {
        threads: workers,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Forward { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run(RunArgs::default());
    Ok(())
}
