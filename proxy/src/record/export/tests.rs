use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Instant as StdInstant;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use toolgate_policy::config::{ChainSettings, Otlp, OtlpProtocol, StaticEnv};

use super::otlp::{settings, Headers, Settings};
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
            headers: Headers::default(),
        }
    );
}

#[test]
fn export_headers_come_from_the_environment_and_compression_is_refused() {
    let s = settings(
        Some(&configured()),
        &env(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "ignored=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "api-key=s%3Dcret ,x-tenant=acme,=novalue,nokey=,bare",
            ),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        s.headers.0,
        vec![
            ("api-key".to_string(), "s=cret".to_string()),
            ("x-tenant".to_string(), "acme".to_string())
        ]
    );
    // A collector's API key never reaches a log through the settings' Debug.
    let shown = format!("{s:?}");
    assert!(
        shown.contains("api-key") && !shown.contains("s=cret"),
        "{shown}"
    );
    let err = settings(
        Some(&configured()),
        &env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_COMPRESSION") && err.contains("uncompressed"),
        "{err}"
    );
    assert!(settings(
        Some(&configured()),
        &env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")]),
    )
    .is_ok());
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

fn chain(max_tasks: usize, idle_ttl: Duration) -> ChainSettings {
    ChainSettings {
        task_header: http::HeaderName::from_static("x-toolgate-task"),
        max_actions: 16,
        max_tasks,
        idle_ttl,
        agent_label_ttl: Duration::from_secs(60),
        require_task_token: false,
        ended_retention: Duration::from_secs(3600),
    }
}

fn task_exchange(task: &str) -> Exchange {
    let mut x = Exchange::new();
    x.decision_id = "d".into();
    x.task_id = task.into();
    x.trace.trace_id = crate::record::trace::task_trace_id("a", task, true);
    x
}

fn end() -> End<'static> {
    End {
        ended: std::time::SystemTime::now(),
        status: 200,
        method: "GET",
        agent: "a",
        policy_revision: "r",
        error: None,
    }
}

fn exported(c: &Collector) -> Vec<SpanData> {
    c.spans.lock().unwrap().clone()
}

#[test]
fn a_tasks_actions_are_children_of_its_root_which_shutdown_exports() {
    let c = Collector::default();
    let (spans, dropped) = start(&c, fast());
    let settings = chain(8, Duration::from_secs(600));
    for _ in 0..3 {
        spans.action(&task_exchange("T-1"), None, &end(), &settings);
    }
    spans.action(&task_exchange("T-2"), None, &end(), &settings);
    assert_eq!(spans.open_tasks(), 2);
    eventually("the actions are exported", || c.exported() == 4);
    assert!(spans.shutdown(Duration::from_secs(5)));
    let all = exported(&c);
    assert_eq!(all.len(), 6, "4 actions and 2 task roots");
    let root = all.iter().find(|s| s.name == "task T-1").unwrap();
    let children: Vec<&SpanData> = all
        .iter()
        .filter(|s| s.parent_span_id == root.span_context.span_id())
        .collect();
    assert_eq!(children.len(), 3);
    assert!(children
        .iter()
        .all(|s| s.span_context.trace_id() == root.span_context.trace_id()));
    assert!(root
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "toolgate.task.closed" && kv.value.as_str() == "shutdown"));
    assert_eq!(dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn an_idle_task_root_is_exported_without_waiting_for_shutdown() {
    let c = Collector::default();
    let (spans, _) = start(&c, fast());
    let settings = chain(8, Duration::from_millis(50));
    spans.action(&task_exchange("T-idle"), None, &end(), &settings);
    eventually("the idle root is exported", || {
        exported(&c).iter().any(|s| s.name == "task T-idle")
    });
    assert_eq!(spans.open_tasks(), 0);
    let root = exported(&c)
        .into_iter()
        .find(|s| s.name == "task T-idle")
        .unwrap();
    assert!(root
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "toolgate.task.closed" && kv.value.as_str() == "idle"));
}

#[test]
fn an_ended_task_root_is_exported_and_a_flood_of_tasks_closes_roots_early() {
    let c = Collector::default();
    let (spans, _) = start(&c, fast());
    // max_tasks 2: at most 4 roots open at once.
    let settings = chain(2, Duration::from_secs(600));
    spans.action(&task_exchange("T-end"), None, &end(), &settings);
    spans.end_task("T-end");
    assert_eq!(spans.open_tasks(), 0);
    for i in 0..20 {
        spans.action(&task_exchange(&format!("F-{i}")), None, &end(), &settings);
        assert!(spans.open_tasks() <= 4);
    }
    assert!(spans.shutdown(Duration::from_secs(5)));
    let all = exported(&c);
    let roots: Vec<&SpanData> = all.iter().filter(|s| s.name.starts_with("task ")).collect();
    assert_eq!(roots.len(), 21, "every root is exported once, early or not");
    let closed = |why: &str| {
        roots
            .iter()
            .filter(|s| {
                s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "toolgate.task.closed" && kv.value.as_str() == why)
            })
            .count()
    };
    assert_eq!(
        (closed("ended"), closed("evicted"), closed("shutdown")),
        (1, 16, 4)
    );
}

#[test]
fn an_action_under_the_agents_traceparent_opens_no_root() {
    let c = Collector::default();
    let (spans, _) = start(&c, fast());
    let mut x = task_exchange("T-1");
    x.trace.parent = Some(crate::identify::TraceParent {
        trace_id: [1; 16],
        parent_id: [2; 8],
        flags: 1,
    });
    spans.action(&x, None, &end(), &chain(8, Duration::from_secs(600)));
    assert_eq!(spans.open_tasks(), 0);
    assert!(spans.shutdown(Duration::from_secs(5)));
    let all = exported(&c);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].parent_span_id.to_bytes(), [2; 8]);
}
