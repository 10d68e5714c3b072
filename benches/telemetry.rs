//! The request path's share of telemetry: building an action's span, and handing it to the
//! export queue (a real queue and export thread, with an exporter that discards).
//!
//! cargo bench --bench telemetry
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use toolgate_policy::chain::SpanRef;
use toolgate_policy::evaluate::Effect;
use toolgate_proxy::pipeline::Exchange;
use toolgate_proxy::record::decision_log::Credential;
use toolgate_proxy::record::export::{Batching, Spans};
use toolgate_proxy::record::span::{action_span, End};
use toolgate_proxy::record::trace::Target;

// The allocator the toolgate binary runs with (src/main.rs), so costs match the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// An allowed, forwarded action in the middle of a task, as the quickstart produces it.
fn exchange() -> Exchange {
    let mut x = Exchange::new();
    x.decision_id = "01936f0e-8a5c-7b3e-9f1d-2c4b6a8e0f12".into();
    x.task_id = "T-42".into();
    x.tool = Some(Arc::from("jira"));
    x.action = Arc::from("ticket.transition");
    x.effect = Some(Effect::Allow);
    x.reason = "SUP-12 was read earlier in this task".into();
    x.seq = Some(2);
    x.eval_time = Some(Duration::from_micros(3));
    x.trace.evaluated_at = Some(Instant::now());
    x.trace.previous = Some(SpanRef {
        trace_id: [7; 16],
        span_id: [9; 8],
    });
    x.upstream_sent = Some(Instant::now());
    x.trace.target = Some(Target {
        scheme: "https",
        host: "jira.example.com".into(),
        port: 443,
        path: "/rest/api/3/issue/SUP-12/transitions".into(),
    });
    x
}

fn bench(c: &mut Criterion) {
    let x = exchange();
    let credential = Credential {
        name: "jira-token",
        kind: "secret",
        id: None,
    };
    let end = End {
        ended: SystemTime::now(),
        status: 200,
        method: "POST",
        agent: "spiffe://example.org/ns/support/sa/triage-agent",
        policy_revision: "b9c244d69bb6cea1",
        error: None,
    };
    let spans = Spans::start(
        || Ok(Discard),
        Batching {
            max_queue: 1 << 16,
            delay: Duration::from_millis(10),
            ..Batching::default()
        },
        "discard".into(),
        Arc::default(),
    )
    .unwrap();
    let mut g = c.benchmark_group("telemetry");
    g.bench_function("action_span", |b| {
        b.iter(|| action_span(&x, Some(&credential), &end))
    });
    g.bench_function("action_span_and_submit", |b| {
        b.iter(|| spans.submit(action_span(&x, Some(&credential), &end)))
    });
    g.finish();
    spans.shutdown(Duration::from_secs(5));
}

criterion_group!(benches, bench);
criterion_main!(benches);
