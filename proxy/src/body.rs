//! Body: read a request body that classification needs, before the decision, so that the
//! decision is made on the bytes the tool will receive. Requests whose candidate actions do
//! not read the body are left alone and stream through.
//!
//! pingora does not re-send a body read in `request_filter` unless retry buffering was
//! enabled before the read; it then replays up to 64 KiB, which is why
//! `limits.max_body_bytes` is capped there (STACK-NOTES.md).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use toolgate_policy::config::{body_cap, Limits};
use toolgate_policy::prepare::Head;

use crate::problem::Refusal;

/// Why a needed body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("cannot read the request body: {0}")]
    Read(String),
    #[error("the request body cannot be held for the tool (over pingora's 64 KiB replay buffer)")]
    NotReplayable,
}

/// Read the body of a request whose classification needs it: at most one byte past the cap
/// (`limits.max_body_bytes`, at most 64 KiB; classification then refuses it), within
/// `limits.upstream_timeout`. `Ok(None)` when the body is not needed and was not touched.
pub async fn read(
    session: &mut Session,
    head: &Head,
    limits: &Limits,
) -> Result<Option<Bytes>, Refusal> {
    if !head.needs_body {
        return Ok(None);
    }
    let budget = limits.upstream_timeout;
    match tokio::time::timeout(budget, read_capped(session, body_cap(limits))).await {
        Ok(read) => read.map(Some),
        Err(_) => Err(Refusal::Body(BodyError::Timeout(budget))),
    }
}

/// Read the body, buffered for replay to the tool, up to one byte past `limit`.
pub(crate) async fn read_capped(session: &mut Session, limit: usize) -> Result<Bytes, Refusal> {
    continue_if_expected(session).await?;
    // Without this, pingora would not forward the bytes read here.
    session.as_downstream_mut().enable_retry_buffering();
    let mut body = BytesMut::new();
    loop {
        let chunk = session
            .as_downstream_mut()
            .read_request_body()
            .await
            .map_err(|e| Refusal::Body(BodyError::Read(e.to_string())))?;
        let Some(chunk) = chunk else { break };
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            // Enough to refuse; the rest is never read, and the connection is closed.
            return Ok(body.freeze());
        }
    }
    if session.as_downstream().retry_buffer_truncated() {
        return Err(Refusal::Body(BodyError::NotReplayable));
    }
    Ok(body.freeze())
}

/// A client that sent `Expect: 100-continue` waits for it before sending the body; the tool
/// will get the body without the expectation, since toolgate holds it already.
async fn continue_if_expected(session: &mut Session) -> Result<(), Refusal> {
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects {
        return Ok(());
    }
    session
        .req_header_mut()
        .remove_header(&http::header::EXPECT);
    let header = ResponseHeader::build(100, Some(0))
        .map_err(|e| Refusal::Body(BodyError::Read(e.to_string())))?;
    session
        .as_downstream_mut()
        .write_response_header(Box::new(header))
        .await
        .map_err(|e| Refusal::Body(BodyError::Read(e.to_string())))
}
