use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Instant as StdInstant;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use toolgate_policy::config::{Otlp, OtlpProtocol, StaticEnv};

use super::otlp::{settings, Settings};
use super::*;
use crate::pipeline::Exchange;
use crate::record::span::{action_span, End};

/// A stand-in collector: records batches, can fail, can hold exports until released.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<SpanData>>>,
    fail: Arc<AtomicBool>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl SpanExporter for Collector {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await;
        }
        if self.fail.load(Ordering::Relaxed) {
            return Err(OTelSdkError::InternalFailure("collector down".into()));
        }
        self.spans.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Collector {
    fn held() -> (Collector, Arc<tokio::sync::Semaphore>) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let c = Collector {
            gate: Some(gate.clone()),
            ..Collector::default()
        };
        (c, gate)
    }

    fn exported(&self) -> usize {
        self.spans.lock().unwrap().len()
    }
}

fn span() -> SpanData {
    let x = Exchange::new();
    action_span(
        &x,
        None,
        &End {
            ended: std::time::SystemTime::now(),
            status: 200,
            method: "GET",
            agent: "a",
            policy_revision: "r",
            error: None,
        },
    )
}

fn start(c: &Collector, batching: Batching) -> (Spans, Arc<AtomicU64>) {
    let dropped = Arc::new(AtomicU64::new(0));
    let exporter = c.clone();
    let spans = Spans::start(
        move || Ok(exporter),
        batching,
        "test".into(),
        dropped.clone(),
    )
    .unwrap();
    (spans, dropped)
}

/// Poll `cond` for up to 20 s (the machine is shared; never assume speed).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = StdInstant::now() + Duration::from_secs(20);
    while StdInstant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting until {what}");
}

fn fast() -> Batching {
    Batching {
        delay: Duration::from_millis(10),
        ..Batching::default()
    }
}

#[test]
fn spans_are_batched_and_exported() {
    let c = Collector::default();
    let (spans, dropped) = start(&c, fast());
    for _ in 0..3 {
        spans.submit(span());
    }
    eventually("3 spans are exported", || c.exported() == 3);
    assert_eq!(dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let (c, gate) = Collector::held();
    let batching = Batching {
        max_queue: 2,
        max_batch: 1,
        ..fast()
    };
    let (spans, dropped) = start(&c, batching);
    // The export of the first span hangs; at most two more fit in the queue.
    for _ in 0..10 {
        spans.submit(span());
    }
    assert!(dropped.load(Ordering::Relaxed) >= 7, "{dropped:?}");
    gate.add_permits(100);
    assert!(spans.shutdown(Duration::from_secs(10)));
    assert_eq!(c.exported() as u64 + dropped.load(Ordering::Relaxed), 10);
}

#[test]
fn failed_exports_are_counted_as_dropped() {
    let c = Collector::default();
    c.fail.store(true, Ordering::Relaxed);
    let (spans, dropped) = start(&c, fast());
    for _ in 0..3 {
        spans.submit(span());
    }
    eventually("3 spans are counted as dropped", || {
        dropped.load(Ordering::Relaxed) == 3
    });
    // Recovery: later spans go through again.
    c.fail.store(false, Ordering::Relaxed);
    spans.submit(span());
    eventually("the next span is exported", || c.exported() == 1);
}

#[test]
fn shutdown_flushes_what_is_queued() {
    let c = Collector::default();
    let batching = Batching {
        delay: Duration::from_secs(3600),
        ..Batching::default()
    };
    let (spans, dropped) = start(&c, batching);
    for _ in 0..5 {
        spans.submit(span());
    }
    assert_eq!(c.exported(), 0);
    assert!(spans.shutdown(Duration::from_secs(10)));
    assert_eq!(c.exported(), 5);
    assert_eq!(dropped.load(Ordering::Relaxed), 0);
    // After shutdown nothing is accepted, and nothing blocks.
    spans.submit(span());
    assert_eq!(dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn shutdown_gives_up_at_its_deadline_and_counts_what_is_left() {
    let (c, _gate) = Collector::held();
    let batching = Batching {
        delay: Duration::from_secs(3600),
        ..Batching::default()
    };
    let (spans, dropped) = start(&c, batching);
    spans.submit(span());
    spans.submit(span());
    assert!(spans.shutdown(Duration::from_millis(200)));
    assert_eq!(dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn an_exporter_that_cannot_be_built_fails_the_start() {
    let err = Spans::start(
        || Err::<Collector, _>("no such endpoint".to_string()),
        Batching::default(),
        "test".into(),
        Arc::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot build the OTLP exporter: no such endpoint"
    );
}

fn env(pairs: &[(&str, &str)]) -> StaticEnv {
    StaticEnv(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn configured() -> Otlp {
    Otlp {
        endpoint: "http://c:4318/v1/traces".into(),
        protocol: OtlpProtocol::Http,
    }
}

#[test]
fn configuration_wins_over_the_environment() {
    let s = settings(
        Some(&configured()),
        &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4317")]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        s,
        Settings {
            endpoint: "http://c:4318/v1/traces".into(),
            protocol: OtlpProtocol::Http,
            timeout: Duration::from_secs(10),
            batching: Batching::default(),
        }
    );
}

#[test]
fn the_standard_environment_enables_and_tunes_export() {
    assert_eq!(settings(None, &env(&[])).unwrap(), None);
    let s = settings(
        None,
        &env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(s.protocol, OtlpProtocol::Http);
    assert_eq!(s.timeout, Duration::from_millis(2500));
    assert_eq!(s.batching.delay, Duration::from_millis(100));
    assert_eq!((s.batching.max_queue, s.batching.max_batch), (64, 64));

    let s = settings(
        None,
        &env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (s.endpoint.as_str(), s.protocol),
        ("http://tempo:4317", OtlpProtocol::Grpc)
    );
}

#[test]
fn export_can_be_switched_off_by_the_standard_variables() {
    for off in [
        [("OTEL_SDK_DISABLED", "true")],
        [("OTEL_TRACES_EXPORTER", "none")],
    ] {
        assert_eq!(settings(Some(&configured()), &env(&off)).unwrap(), None);
    }
}

#[test]
fn bad_environment_values_name_the_variable() {
    for (var, value, why) in [
        (
            "OTEL_BSP_SCHEDULE_DELAY",
            "5s",
            "must be a whole number of milliseconds",
        ),
        (
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "0",
            "must be a positive whole number",
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "must be `http/protobuf` or `grpc`",
        ),
        (
            "OTEL_TRACES_EXPORTER",
            "zipkin",
            "toolgate exports spans with `otlp` (or `none`)",
        ),
    ] {
        let e = settings(
            None,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (var, value),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), format!("{var}={value:?}: {why}"));
    }
}
