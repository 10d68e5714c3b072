//! The `tools/list` filter (proxy/src/mcp/listing.rs): what filtering an answer of 100 tools
//! adds — each tool's definition digested and remembered, then decided as its `tools/call`
//! (`input.listing: true`) on the quickstart policy (RVM), and the answer rewritten — for a
//! JSON body and for the same answer as an SSE event, against parsing and printing the
//! answer alone. Budget (issue 18): under 1 ms for 100 tools.
//!
//! Each row is measured twice: `listing/…` in wall time, as every other bench, and
//! `listing_cpu/…` in the time the benchmark's thread spent on a CPU
//! (`CLOCK_THREAD_CPUTIME_ID`), which a machine shared with other work inflates far less.
//!
//! cargo bench --bench listing
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::HeaderMap;
use serde_json::{json, Value as Json};
use toolgate_policy::chain::{Ledger, TaskKey};
use toolgate_policy::classify::mcp::definition::Definitions;
use toolgate_policy::config::{Config, EmbeddedFiles, StaticEnv};
use toolgate_policy::evaluate::{Input, Policy, RequestView, Value};
use toolgate_proxy::mcp::listing::{Lister, Listing};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOOLS: usize = 100;

fn quickstart() -> Config {
    let files = EmbeddedFiles::new(toolgate_policy::quickstart::FILES);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap()
}

/// 100 tool definitions of realistic size: a description and a small input schema each; the
/// quickstart allows two of them, denies one, and has no rule for the rest.
fn answer() -> Json {
    let tools: Vec<Json> = (0..TOOLS)
        .map(|i| {
            let name = match i {
                0 => "lookup_customer".to_string(),
                1 => "export_customers".to_string(),
                2 => "delete_customer".to_string(),
                _ => format!("tool_{i}"),
            };
            json!({"name": name,
                "description": format!("Tool {i}: looks things up in the CRM and returns them as a table."),
                "inputSchema": {"type": "object", "properties": {
                    "customer": {"type": "string", "description": "The customer's id"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100}},
                    "required": ["customer"]},
                "annotations": {"readOnlyHint": i % 2 == 0}})
        })
        .collect();
    json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools, "nextCursor": "page-2"}})
}

/// The `tools/list` request's input, built as the evaluate stage builds it.
fn base(config: &Config, ledger: &Ledger, headers: &HeaderMap) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    Input {
        agent_id: &config.agent.id,
        agent_claims: None,
        task_id: "T-1",
        task_claims: None,
        task_verified: false,
        action: "crm.mcp.tools_list",
        tool: Some("crm"),
        attributes: &[],
        request: RequestView {
            method: "POST",
            scheme: "https",
            host: "crm.example.com",
            port: 443,
            path: "/mcp",
            params: &[],
            headers,
            hidden: &[],
            body: Some(&body),
        },
        state: ledger.view(&TaskKey::named("T-1"), &config.agent.id, SystemTime::now()),
        now: SystemTime::now(),
    }
    .to_value()
}

/// The time this thread has spent on a CPU, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
fn on_cpu() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// Criterion measurement: on-CPU time of the benchmarking thread (read once per sample, not
/// per iteration).
struct OnCpu;

impl Measurement for OnCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        on_cpu()
    }
    fn end(&self, started: u64) -> u64 {
        on_cpu().saturating_sub(started)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanos
    }
}

/// Nanoseconds shown as criterion shows wall time.
struct Nanos;

impl ValueFormatter for Nanos {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical {
            t if t < 1e3 => (1.0, "ns"),
            t if t < 1e6 => (1e-3, "µs"),
            t if t < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, _: f64, _: &Throughput, _: &mut [f64]) -> &'static str {
        "-"
    }
    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn wall(c: &mut Criterion) {
    bench(c, "listing");
}

fn cpu(c: &mut Criterion<OnCpu>) {
    bench(c, "listing_cpu");
}

fn bench<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let config = quickstart();
    let policy = Policy::compile(&config.policy).unwrap();
    let ledger = Ledger::new(&config.chain);
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert(
        "accept",
        "application/json, text/event-stream".parse().unwrap(),
    );
    let base = base(&config, &ledger, &headers);
    let definitions = Definitions::new(4096);
    let tool: Arc<str> = Arc::from("crm");
    let lister = Lister {
        policy: &policy,
        definitions: &definitions,
        tool: &tool,
        lock: None,
        dry_run: false,
    };
    let json = answer().to_string();
    let sse = format!("event: message\ndata: {json}\n\n");
    let ids = [json!(1)];
    // What the filter keeps: the two tools the quickstart allows.
    let (kept, counts) = lister.rewrite_body(&base, &ids, json.as_bytes());
    assert_eq!((counts.kept, counts.dropped), (2, TOOLS - 2));
    assert!(kept.is_some());

    let mut g = c.benchmark_group(group);
    g.bench_function("parse_and_print_100_tools", |b| {
        b.iter(|| serde_json::to_vec(&serde_json::from_str::<Json>(&json).unwrap()).unwrap())
    });
    g.bench_function("filter_100_tools_json", |b| {
        b.iter(|| lister.rewrite_body(&base, &ids, json.as_bytes()))
    });
    g.bench_function("filter_100_tools_sse", |b| {
        b.iter(|| {
            let mut listing = Listing::new(base.clone(), json!({}));
            listing.add(json!(1));
            listing.read_as(true);
            listing.chunk(&lister, Some(sse.as_bytes()), true, 1 << 20)
        })
    });
    g.finish();
}

criterion_group!(benches, wall);
criterion_group! {
    name = benches_cpu;
    config = Criterion::default().with_measurement(OnCpu);
    targets = cpu
}
criterion_main!(benches, benches_cpu);
