//! The whole in-process pipeline for one request, no sockets: accept → normalise → classify →
//! evaluate (input document + RVM) → credential selection, on the quickstart configuration.
//!
//! cargo bench --bench pipeline
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use toolgate_policy::chain::{self, Ledger};
use toolgate_policy::config::Config;
use toolgate_policy::evaluate::{Input, Policy, RequestView};
use toolgate_policy::prepare::prepare;

fn bench(c: &mut Criterion) {
    let config = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart/toolgate.yaml"
    )))
    .unwrap();
    let policy = Policy::compile(&config.policy).unwrap();
    let ledger = Ledger::new(&config.chain);
    let mut headers = HeaderMap::new();
    headers.insert("host", "jira.example.com".parse().unwrap());
    headers.insert("user-agent", "agent/1.0".parse().unwrap());
    headers.insert("authorization", "Bearer agent-own".parse().unwrap());
    let read = b"http://jira.example.com/rest/api/3/issue/SUP-12";

    let mut g = c.benchmark_group("pipeline");
    g.bench_function("prepare", |b| {
        b.iter(|| prepare(&config, "GET", read, &headers, None).unwrap())
    });
    g.bench_function("request_to_credential", |b| {
        b.iter(|| {
            let prepared = prepare(&config, "GET", read, &headers, None).unwrap();
            let class = &prepared.classification;
            let tool = class.tool.and_then(|t| config.catalog.tool(t));
            let accepted = &prepared.accepted;
            let decision = policy.decide(
                Input {
                    agent_id: &config.agent.id,
                    agent_claims: None,
                    task_id: "T-1",
                    task_claims: None,
                    action: &class.action,
                    tool: tool.map(|t| &*t.name),
                    attributes: &class.attributes,
                    request: RequestView {
                        method: accepted.request.method.as_str(),
                        scheme: "http",
                        host: &accepted.host,
                        port: accepted.port,
                        path: &accepted.request.path,
                        params: &accepted.request.params,
                        headers: &headers,
                        hidden: &[],
                        body: None,
                    },
                    chain: ledger.history("T-1"),
                    now: std::time::SystemTime::now(),
                }
                .to_value(),
            );
            assert!(decision.allowed());
            let seq = ledger.record(
                "T-1",
                &chain::Action {
                    action: &class.action,
                    tool: tool.map(|t| &*t.name),
                    decision: decision.effect.as_str(),
                    dry_run: false,
                    attributes: &class.attributes,
                    at: std::time::SystemTime::now(),
                },
            );
            ledger.complete("T-1", seq, 200);
            toolgate_proxy::credential::select(&config, tool, &decision.credential).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
