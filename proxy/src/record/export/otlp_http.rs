//! OTLP/HTTP (protobuf) export: the body written by [`encode`](super::encode), POSTed with
//! the headers of `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`, retried as the OTLP specification and
//! the OpenTelemetry exporter do (429, 502, 503, 504 and failed connections; at most 3 retries,
//! 100 ms doubling to 1.6 s plus up to 100 ms of jitter, a `Retry-After` in seconds honoured up
//! to 30 s), all within the export timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use opentelemetry_http::HttpClient;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tokio::time::Instant;

use super::encode::Body;

/// Retries after the first attempt.
const MAX_RETRIES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
const MAX_JITTER_MS: u64 = 100;
/// The longest `Retry-After` honoured.
const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// Sends spans to one OTLP/HTTP traces endpoint.
pub struct HttpExporter<C> {
    client: C,
    endpoint: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Deadline of one export, retries included.
    timeout: Duration,
    body: Body,
    shut: AtomicBool,
}

impl<C> std::fmt::Debug for HttpExporter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpExporter")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed, and whether (and when) it may be retried.
enum Failure {
    /// Not retried: the collector refused the data.
    Final(String),
    /// Retried after the backoff, or after the collector's `Retry-After` when it sent one.
    Again(String, Option<Duration>),
}

impl<C: HttpClient> HttpExporter<C> {
    /// An exporter POSTing to `endpoint` (the complete traces URL) with `headers` (name and
    /// value pairs; invalid ones are refused here, so a typo fails at start).
    pub fn new(
        client: C,
        endpoint: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Self, String> {
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?;
        let mut all = vec![(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("toolgate/", env!("CARGO_PKG_VERSION"))),
        )];
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("OTLP header name {k:?} is not a valid header name"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("OTLP header {k:?}: the value is not a valid header value"))?;
            all.retain(|(n, _)| *n != name);
            all.push((name, value));
        }
        Ok(HttpExporter {
            client,
            endpoint,
            headers: all,
            timeout,
            body: Body::default(),
            shut: AtomicBool::new(false),
        })
    }

    async fn attempt(&self, body: &Bytes) -> Result<(), Failure> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        let request = request
            .body(body.clone())
            .map_err(|e| Failure::Final(format!("cannot build the request: {e}")))?;
        let response = self
            .client
            .send_bytes(request)
            .await
            .map_err(|e| Failure::Again(format!("no answer: {e}"), None))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            rejected(response.body());
            return Ok(());
        }
        let why = format!("the collector answered {status}");
        match status {
            429 | 503 => Err(Failure::Again(
                why,
                response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s).min(MAX_THROTTLE)),
            )),
            502 | 504 => Err(Failure::Again(why, None)),
            _ => Err(Failure::Final(why)),
        }
    }
}

impl<C: HttpClient + 'static> SpanExporter for HttpExporter<C> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let mut out = Vec::new();
        self.body.encode(&batch, &mut out);
        drop(batch);
        let body = Bytes::from(out);
        let deadline = Instant::now() + self.timeout;
        let mut delay = FIRST_DELAY;
        let mut cap = MAX_DELAY;
        let mut retries = 0;
        loop {
            let why = match self.attempt(&body).await {
                Ok(()) => return Ok(()),
                Err(Failure::Final(why)) => return Err(OTelSdkError::InternalFailure(why)),
                Err(Failure::Again(why, after)) => {
                    if let Some(after) = after {
                        if after > cap {
                            cap = MAX_THROTTLE;
                        }
                        delay = delay.max(after);
                    }
                    why
                }
            };
            let wait = (delay + jitter()).min(cap);
            if retries >= MAX_RETRIES || Instant::now() + wait >= deadline {
                return Err(OTelSdkError::InternalFailure(why));
            }
            retries += 1;
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(cap);
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut.swap(true, Ordering::AcqRel) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.body = Body::new(resource);
    }
}

/// Up to [`MAX_JITTER_MS`] of jitter, so sidecars that failed together do not retry together.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(nanos) % (MAX_JITTER_MS + 1))
}

/// Log a collector's partial success (`ExportTraceServiceResponse.partial_success`: spans it
/// rejected, and why). Anything that does not parse is ignored: the export succeeded.
fn rejected(body: &[u8]) {
    let Some(partial) = fields(body).find_map(|f| match f {
        (1, Field::Bytes(b)) => Some(b),
        _ => None,
    }) else {
        return;
    };
    let mut count = 0;
    let mut message = std::borrow::Cow::Borrowed("");
    for f in fields(partial) {
        match f {
            (1, Field::Varint(n)) => count = n,
            (2, Field::Bytes(b)) => message = String::from_utf8_lossy(b),
            _ => {}
        }
    }
    if count > 0 || !message.is_empty() {
        tracing::warn!(target: "toolgate::telemetry", rejected_spans = count, %message, "the OTLP collector rejected spans");
    }
}

/// A protobuf field's value: what `rejected` reads of one.
#[derive(Debug, PartialEq)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of a protobuf message, by number, until the end or the first malformed one.
fn fields(mut b: &[u8]) -> impl Iterator<Item = (u64, Field<'_>)> {
    std::iter::from_fn(move || {
        let key = varint(&mut b)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 => {
                b = b.get(8..)?;
                Field::Fixed
            }
            5 => {
                b = b.get(4..)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let value = b.get(..len)?;
                b = b.get(len..)?;
                Field::Bytes(value)
            }
            _ => return None,
        };
        Some((key >> 3, field))
    })
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests;
