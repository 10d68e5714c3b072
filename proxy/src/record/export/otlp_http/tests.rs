//! The exporter against a real HTTP server on loopback that answers as a collector would:
//! what it sends, what it retries and what it gives up on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use opentelemetry_sdk::Resource;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::HttpExporter;

/// One request as the collector received it: its head (lower-cased) and body.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
}

/// A collector answering each request with the next of `answers` (the last one repeats).
async fn collector(answers: Vec<&'static [u8]>) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 16384];
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.push(Received { head, body });
                        s.len()
                    };
                    let answer = answers[(n - 1).min(answers.len() - 1)];
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, got)
}

fn span() -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(1),
            SpanId::from(2),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: "ticket.close".into(),
        start_time: std::time::SystemTime::now(),
        end_time: std::time::SystemTime::now(),
        attributes: vec![KeyValue::new("toolgate.action", "ticket.close")],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::builder("toolgate").build(),
    }
}

fn exporter(url: &str, timeout: Duration) -> HttpExporter<HyperClient> {
    let mut e = HttpExporter::new(
        HyperClient::with_default_connector(timeout, None),
        url,
        &[("api-key".to_string(), "s3cret".to_string())],
        timeout,
    )
    .unwrap();
    e.set_resource(
        &Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "toolgate")])
            .build(),
    );
    e
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\n\r\n";
const REFUSED: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";

#[tokio::test]
async fn a_batch_is_posted_as_protobuf_with_the_headers_and_retried_when_the_collector_is_busy() {
    let (url, got) = collector(vec![BUSY, OK]).await;
    exporter(&url, Duration::from_secs(10))
        .export(vec![span(), span()])
        .await
        .unwrap();
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one 503, then the retry");
    for r in &got {
        assert!(r.head.starts_with("post /v1/traces http/1.1"), "{}", r.head);
        assert!(
            r.head.contains("content-type: application/x-protobuf"),
            "{}",
            r.head
        );
        assert!(r.head.contains("api-key: s3cret"), "{}", r.head);
        let request = ExportTraceServiceRequest::decode(r.body.as_slice()).unwrap();
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "ticket.close");
    }
    assert_eq!(got[0].body, got[1].body, "the retry sends the same body");
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let (url, got) = collector(vec![REFUSED, OK]).await;
    let err = exporter(&url, Duration::from_secs(10))
        .export(vec![span()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_collector_that_stays_busy_is_given_up_within_the_timeout() {
    let (url, got) = collector(vec![BUSY]).await;
    let started = std::time::Instant::now();
    let err = exporter(&url, Duration::from_millis(700))
        .export(vec![span()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let n = got.lock().unwrap().len();
    assert!(
        (2..=4).contains(&n),
        "retried, at most 3 times: {n} requests"
    );
}

#[tokio::test]
async fn a_partial_success_is_a_success() {
    // ExportTraceServiceResponse { partial_success: { rejected_spans: 1, error_message: "x" } }
    const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n\x0a\x05\x08\x01\x12\x01x";
    let (url, got) = collector(vec![PARTIAL]).await;
    exporter(&url, Duration::from_secs(10))
        .export(vec![span()])
        .await
        .unwrap();
    assert_eq!(got.lock().unwrap().len(), 1);
    let body = &PARTIAL[PARTIAL.len() - 7..];
    let partial: Vec<_> = super::fields(body).collect();
    assert_eq!(partial, [(1, super::Field::Bytes(b"\x08\x01\x12\x01x"))]);
    let inner: Vec<_> = super::fields(b"\x08\x01\x12\x01x").collect();
    assert_eq!(
        inner,
        [(1, super::Field::Varint(1)), (2, super::Field::Bytes(b"x"))]
    );
    // Truncated or malformed: the fields end, nothing panics.
    assert_eq!(super::fields(b"\x0a\x09\x08").count(), 0);
    assert_eq!(super::fields(b"\x08\xff\xff").count(), 0);
}

#[test]
fn a_header_that_cannot_be_sent_fails_at_start() {
    for (name, value, named) in [
        ("bad header", "v", "bad header"),
        ("x", "line\nbreak", "\"x\""),
    ] {
        let refused = HttpExporter::new(
            HyperClient::with_default_connector(Duration::from_secs(1), None),
            "http://127.0.0.1:4318/v1/traces",
            &[(name.to_string(), value.to_string())],
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(refused.contains(named), "{refused}");
    }
}
