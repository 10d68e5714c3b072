//! CONNECT on the proxy listener: read the head (bounded in size and time), refuse hosts no
//! tool lists before any TLS, then intercept (answer 200, terminate TLS with a minted leaf,
//! run the pipeline on the decrypted requests) or, for `intercept: false`, decide on the host
//! alone and splice.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant as Deadline;
use toolgate_policy::accept::{Destination, Via};
use toolgate_policy::classify::UNKNOWN;
use toolgate_policy::normalise;

use super::{intercept, refuse_raw, splice, Front, MAX_CONNECT_HEAD};
use crate::identify;
use crate::problem::{Ids, Refusal};

/// Most header lines in a CONNECT head.
const MAX_HEADERS: usize = 64;

/// A parsed CONNECT request head.
#[derive(Debug)]
pub(super) struct Head {
    pub host: String,
    pub port: u16,
    pub headers: HeaderMap,
}

/// Serve one CONNECT whose first bytes (`prefix`, "CONNECT ") were already read; its head
/// must be whole by `head_deadline` (`limits.head_timeout` after its first byte).
pub(super) async fn serve(
    front: &Front,
    mut stream: L4Stream,
    prefix: Vec<u8>,
    head_deadline: Deadline,
    shutdown: &ShutdownWatch,
) {
    let gw = &front.gateway;
    let started = Instant::now();
    let decision_id = uuid::Uuid::now_v7().to_string();
    let head = match tokio::time::timeout_at(head_deadline, read_head(&mut stream, prefix)).await {
        Ok(Ok(head)) => head,
        Ok(Err(Fail::Closed)) => return,
        Ok(Err(Fail::Bad(reason))) => {
            let refusal = Refusal::BadConnect(reason);
            log_refusal(&decision_id, "-", &refusal, started);
            let ids = Ids {
                action: UNKNOWN,
                decision_id: &decision_id,
                trace_id: "",
            };
            refuse_raw(&mut stream, &refusal, ids).await;
            return;
        }
        Err(_) => {
            gw.metrics.head_refused("head_timeout");
            tracing::info!(target: "toolgate::access", decision_id = %decision_id, via = "connect", "closed: no complete CONNECT head within limits.head_timeout of its first byte");
            return;
        }
    };
    let target = super::authority(&head.host, head.port);
    let snapshot = gw.snapshot();
    // Refusals here happen before any action exists: the agent's trace if it sent one.
    let trace_id = identify::identify(&head.headers, &snapshot.config.chain)
        .ok()
        .and_then(|i| i.parent)
        .map(|p| hex::encode(p.trace_id))
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
    let ids = Ids {
        action: UNKNOWN,
        decision_id: &decision_id,
        trace_id: &trace_id,
    };
    // What a tunnel carries is TLS: a port-less host pattern matches only port 443.
    let Some(tool_id) = snapshot
        .config
        .catalog
        .tool_for_host(&head.host, head.port, true)
    else {
        // Before any TLS: nothing is minted, nothing is connected to.
        let refusal = Refusal::NotCatalogued(target.clone());
        gw.metrics.request(&Arc::from(UNKNOWN), "reject");
        log_refusal(&decision_id, &target, &refusal, started);
        refuse_raw(&mut stream, &refusal, ids).await;
        return;
    };
    let Some(tool) = snapshot.config.catalog.tool(tool_id) else {
        return;
    };
    let destination = Destination {
        via: Via::Tunnel,
        host: head.host.clone(),
        port: head.port,
        tls: true,
    };
    if !tool.intercept {
        let answer = splice::Answer::Http;
        splice::serve(
            gw,
            snapshot.clone(),
            tool_id,
            destination,
            None,
            &head.headers,
            stream,
            answer,
        )
        .await;
        return;
    }
    let leaf = match snapshot.authority.as_ref().map(|ca| ca.leaf(&head.host)) {
        Some(Ok(leaf)) => leaf,
        Some(Err(e)) => {
            let refusal = Refusal::InterceptionUnavailable(e.to_string());
            log_refusal(&decision_id, &target, &refusal, started);
            refuse_raw(&mut stream, &refusal, ids).await;
            return;
        }
        None => {
            let refusal = Refusal::InterceptionUnavailable(format!(
                "HTTPS to tool {} needs toolgate's CA to be configured (tls.ca; `toolgate ca init` creates one), or `intercept: false` on the tool",
                tool.name
            ));
            log_refusal(&decision_id, &target, &refusal, started);
            refuse_raw(&mut stream, &refusal, ids).await;
            return;
        }
    };
    let tool_name = tool.name.clone();
    // Each request inside the tunnel takes the then-current snapshot.
    drop(snapshot);
    if stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
        || stream.flush().await.is_err()
    {
        return;
    }
    tracing::info!(target: "toolgate::access", decision_id = %decision_id, via = "connect", target = %target, tool = %tool_name, status = 200u16, "tunnel opened; intercepting TLS");
    intercept::serve(front, stream, destination, leaf, shutdown).await;
}

/// Why a CONNECT head could not be read.
#[derive(Debug)]
enum Fail {
    /// The client went away.
    Closed,
    /// Malformed or over a limit: answered with 400.
    Bad(String),
}

/// Read up to the end of the head; bytes after it are put back on the stream.
async fn read_head(stream: &mut L4Stream, mut buf: Vec<u8>) -> Result<Head, Fail> {
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_CONNECT_HEAD {
            return Err(Fail::Bad(format!(
                "the CONNECT head is over {MAX_CONNECT_HEAD} bytes"
            )));
        }
        let n = stream.read(&mut chunk).await.map_err(|_| Fail::Closed)?;
        if n == 0 {
            return Err(Fail::Closed);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    if end > MAX_CONNECT_HEAD {
        return Err(Fail::Bad(format!(
            "the CONNECT head is over {MAX_CONNECT_HEAD} bytes"
        )));
    }
    if let Some(rest) = buf.get(end..) {
        stream.rewind(rest);
    }
    parse(buf.get(..end).unwrap_or_default()).map_err(Fail::Bad)
}

/// Parse `CONNECT host:port HTTP/1.x` and its headers.
pub(super) fn parse(bytes: &[u8]) -> Result<Head, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete request head".to_string()),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("more than {MAX_HEADERS} header lines"))
        }
        Err(e) => return Err(format!("malformed request head: {e}")),
    }
    if req.method != Some("CONNECT") {
        return Err("expected CONNECT".to_string());
    }
    let target = req.path.unwrap_or_default();
    let (host, port) = normalise::authority(target).map_err(|e| e.to_string())?;
    let port = port.ok_or_else(|| {
        format!(
            "target {:?} must be authority-form host:port",
            target.chars().take(64).collect::<String>()
        )
    })?;
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| format!("invalid value for header {:?}", h.name))?;
        headers.append(name, value);
    }
    Ok(Head {
        host,
        port,
        headers,
    })
}

fn log_refusal(decision_id: &str, target: &str, refusal: &Refusal, started: Instant) {
    let status = crate::problem::problem(refusal).status;
    tracing::info!(
        target: "toolgate::access",
        decision_id = %decision_id,
        via = "connect",
        target = %target,
        method = "CONNECT",
        status,
        failure = %refusal,
        duration_us = started.elapsed().as_micros() as u64,
        "tunnel refused"
    );
}
