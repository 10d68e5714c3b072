//! Policy evaluation cost on the quickstart policy with a realistic input: a transition whose
//! chain rule scans four earlier actions. RVM (the request path) and interpreter (fallback).
//!
//! cargo bench --bench evaluate
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use serde_json::json;
use toolgate_policy::config::Config;
use toolgate_policy::evaluate::{chain_value, ChainEntry, Evaluator, Input, Policy, RequestView};

fn entry(seq: u64, action: &str, issue: &str) -> ChainEntry {
    ChainEntry {
        seq,
        action: action.into(),
        tool: Some("jira".into()),
        decision: "allow",
        status: Some(200),
        attributes: vec![(Arc::from("issue"), json!(issue))],
        at: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seq),
    }
}

fn bench(c: &mut Criterion) {
    let config = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart/toolgate.yaml"
    )))
    .unwrap();
    let policy = Policy::compile(&config.policy).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("user-agent", "agent/1.0".parse().unwrap());
    let chain = chain_value(&[
        entry(1, "ticket.read", "SUP-3"),
        entry(2, "ticket.comment", "SUP-3"),
        entry(3, "ticket.read", "SUP-12"),
        entry(4, "payment.read", "P-1"),
    ]);
    let attributes = vec![(Arc::from("issue"), json!("SUP-12"))];
    let input = || {
        Input {
            agent_id: &config.agent.id,
            agent_claims: None,
            task_id: "T-42",
            task_claims: None,
            action: "ticket.transition",
            tool: Some("jira"),
            attributes: &attributes,
            request: RequestView {
                method: "POST",
                scheme: "https",
                host: "jira.example.com",
                port: 443,
                path: "/rest/api/3/issue/SUP-12/transitions",
                params: &[],
                headers: &headers,
                hidden: &[],
                body: None,
            },
            chain: chain.clone(),
            now: SystemTime::now(),
        }
        .to_value()
    };
    assert!(
        policy.decide(input()).allowed(),
        "the bench input must exercise the chain rule's allow path"
    );

    let mut g = c.benchmark_group("evaluate");
    g.bench_function("input_document", |b| b.iter(input));
    let prepared = input();
    g.bench_function("rvm", |b| {
        b.iter(|| policy.evaluate(prepared.clone(), Evaluator::Rvm).unwrap())
    });
    g.bench_function("interpreter", |b| {
        b.iter(|| {
            policy
                .evaluate(prepared.clone(), Evaluator::Interpreter)
                .unwrap()
        })
    });
    g.bench_function("input_and_decide", |b| b.iter(|| policy.decide(input())));
    let trivial = Policy::compile(&toolgate_policy::config::PolicySource {
        modules: vec![(
            "t.rego".into(),
            "package toolgate\ndecision := {\"allow\": true}\n".into(),
        )],
        data: json!({}),
        query: "data.toolgate.decision".into(),
        mode: Default::default(),
    })
    .unwrap();
    if let Ok(path) = std::env::var("BENCH_POLICY") {
        let scratch = Policy::compile(&toolgate_policy::config::PolicySource {
            modules: vec![("s.rego".into(), std::fs::read_to_string(path).unwrap())],
            data: config.policy.data.clone(),
            query: "data.toolgate.decision".into(),
            mode: Default::default(),
        })
        .unwrap();
        g.bench_function("rvm_scratch", |b| {
            b.iter(|| scratch.evaluate(prepared.clone(), Evaluator::Rvm).unwrap())
        });
    }
    g.bench_function("rvm_trivial_policy", |b| {
        b.iter(|| trivial.evaluate(prepared.clone(), Evaluator::Rvm).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
