//! `intercept: false`: a tunnel decided by host alone — action `<tool>.connect`, evaluated by
//! policy like any other — then the bytes are copied both ways without inspection. Nothing is
//! classified inside and no credential is injected: the agent's own TLS reaches the tool.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use toolgate_policy::accept::{Accepted, Destination};
use toolgate_policy::chain::Outcome;
use toolgate_policy::classify::{Classification, CONNECT_SUFFIX};
use toolgate_policy::normalise;
use toolgate_policy::prepare::Prepared;

use super::refuse_raw;
use crate::credential;
use crate::evaluate;
use crate::forward;
use crate::gateway::{Gateway, Snapshot};
use crate::identify;
use crate::pipeline::Exchange;
use crate::problem::{self, Refusal};
use crate::record;

/// How a refusal reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// A CONNECT: answered with HTTP (200 before splicing, a problem when refused).
    Http,
    /// A transparently captured TLS connection: nothing can be said before TLS, it is closed.
    Silent,
}

/// Decide `<tool>.connect` for `destination` and splice on allow. `original` is where a
/// transparently captured connection was going.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    gw: &Arc<Gateway>,
    snapshot: Arc<Snapshot>,
    tool_id: usize,
    destination: Destination,
    original: Option<SocketAddr>,
    headers: &HeaderMap,
    mut client: L4Stream,
    answer: Answer,
) {
    let mut x = Exchange::new();
    x.decision_id = uuid::Uuid::now_v7().to_string();
    x.via = Some(destination.via);
    let outcome = decide(gw, &snapshot, tool_id, &destination, headers, &mut x).await;
    let target = super::authority(&destination.host, destination.port);
    let upstream = match outcome {
        Ok(upstream) => upstream,
        Err(refusal) => {
            let status = problem::problem(&refusal).status;
            x.refused = Some(status);
            record::settle(gw, &mut x, problem::outcome(&refusal));
            log(gw, &x, &target, status, Some(&refusal.to_string()), (0, 0));
            if answer == Answer::Http {
                refuse_raw(&mut client, &refusal, x_ids(&x)).await;
            }
            return;
        }
    };
    let connect_timeout = snapshot.config.limits.connect_timeout;
    drop(snapshot);
    let address = match original {
        Some(original) if upstream.is_none() => Ok(original),
        _ => match upstream {
            Some((host, port)) => resolve(&host, port).await,
            None => resolve(&destination.host, destination.port).await,
        },
    };
    let connected = match address {
        Ok(addr) => tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Refusal::UpstreamTimeout)
            .and_then(|r| r.map_err(|e| Refusal::UpstreamUnreachable(e.to_string()))),
        Err(refusal) => Err(refusal),
    };
    let mut server = match connected {
        Ok(s) => s,
        Err(refusal) => {
            let status = problem::problem(&refusal).status;
            record::settle(gw, &mut x, problem::outcome(&refusal));
            log(gw, &x, &target, status, Some(&refusal.to_string()), (0, 0));
            if answer == Answer::Http {
                refuse_raw(&mut client, &refusal, x_ids(&x)).await;
            }
            return;
        }
    };
    // The tunnel is open: the tool's side answered the connect.
    record::settle(gw, &mut x, Outcome::Response(200));
    if answer == Answer::Http {
        // The downstream stream buffers writes: the 200 must be on the wire before splicing.
        let established = client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await;
        if established.is_err() || client.flush().await.is_err() {
            return;
        }
    }
    let copied = tokio::io::copy_bidirectional(&mut client, &mut server)
        .await
        .unwrap_or((0, 0));
    log(gw, &x, &target, 200, None, copied);
}

fn x_ids(x: &Exchange) -> problem::Ids<'_> {
    problem::Ids {
        action: &x.action,
        decision_id: &x.decision_id,
        trace_id: &x.trace_id,
    }
}

/// identify → evaluate `<tool>.connect`; on allow, the tool's upstream if it names one.
async fn decide(
    gw: &Gateway,
    snapshot: &Snapshot,
    tool_id: usize,
    destination: &Destination,
    headers: &HeaderMap,
    x: &mut Exchange,
) -> Result<Option<(String, u16)>, Refusal> {
    let config = &snapshot.config;
    let tool = config.catalog.tool(tool_id);
    let identity = identify::request(headers, config, std::time::SystemTime::now())?;
    identify::enter(gw, config, identity, x);
    let name = tool.map(|t| t.name.clone()).unwrap_or_default();
    x.tool = Some(name.clone());
    x.action = Arc::from(format!("{name}.{CONNECT_SUFFIX}"));
    let request = normalise::request("CONNECT", b"/").map_err(Refusal::Rejected)?;
    let prepared = Prepared {
        accepted: Accepted {
            via: destination.via,
            tool: Some(tool_id),
            tls: destination.tls,
            host: destination.host.clone(),
            port: destination.port,
            request,
        },
        classification: Classification {
            tool: Some(tool_id),
            action: x.action.clone(),
            attributes: Vec::new(),
        },
        body: None,
        rpc: None,
    };
    let hidden = credential::stripped_headers(config, tool);
    evaluate::evaluate(gw, snapshot, &prepared, tool, headers, &hidden, x)?;
    Ok(tool
        .and_then(|t| t.upstream.as_ref())
        .map(|u| (u.host.clone(), u.port)))
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, Refusal> {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => forward::resolve(host, port).await.map_err(Refusal::Forward),
    }
}

fn log(
    gw: &Gateway,
    x: &Exchange,
    target: &str,
    status: u16,
    failure: Option<&str>,
    copied: (u64, u64),
) {
    let decision = x.effect.map(|e| e.as_str()).unwrap_or("reject");
    record::decisions(gw, x);
    gw.metrics.request(&x.action, decision);
    tracing::info!(
        target: "toolgate::access",
        decision_id = %x.decision_id,
        trace_id = %x.trace_id,
        task = %x.task_id,
        via = x.via.map(|v| v.as_str()).unwrap_or("-"),
        tool = x.tool.as_deref().unwrap_or("-"),
        action = %x.action,
        decision,
        reason = %x.reason,
        failure = failure.unwrap_or("-"),
        target = %target,
        method = "CONNECT",
        status,
        bytes_up = copied.0,
        bytes_down = copied.1,
        duration_us = x.started.elapsed().as_micros() as u64,
        "tunnel spliced"
    );
}
