//! Policy evaluation cost on the quickstart policy with a realistic input: a transition whose
//! chain rule scans four earlier actions. RVM (the request path) and interpreter (fallback).
//! Then the load bench's policy (`benches/data/load-policy.rego`), whose chain rule scans a
//! full chain of 16 and 64 earlier actions: what a longer task costs per request, beside the
//! same decisions written idiomatically (`benches/data/idiomatic-policy.rego`). And the
//! quickstart policy's hand-ordered `else` chain against the same policy written as OPA users
//! write it (`benches/data/quickstart-idiomatic.rego`), on the same inputs, after checking that
//! both decide each input alike.
//!
//! cargo bench --bench evaluate
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use serde_json::json;
use toolgate_policy::chain::Outcome;
use toolgate_policy::config::Config;
use toolgate_policy::evaluate::{
    chain_value, ChainEntry, Evaluator, Input, Policy, RequestView, View,
};

// The allocator the toolgate binary runs with (src/main.rs), so costs match the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn entry(seq: u64, action: &str, issue: &str) -> ChainEntry {
    ChainEntry {
        seq,
        action: action.into(),
        tool: Some("jira".into()),
        decision: "allow",
        agent: "spiffe://example.org/agent".into(),
        outcome: Some(Outcome::Response(200)),
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
            task_verified: false,
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
            state: View::of_chain(chain.clone()),
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
    quickstart_forms(c, &config, &headers);
    chain_scan(c, &headers);
}

/// The quickstart's `else` chain against the same decisions as separate rules, a deny set and
/// helpers (issue 20: idiomatic rules may cost at most 1 µs more).
fn quickstart_forms(c: &mut Criterion, config: &Config, headers: &HeaderMap) {
    let idiomatic = Policy::compile(&toolgate_policy::config::PolicySource {
        modules: vec![(
            "quickstart-idiomatic.rego".into(),
            include_str!("data/quickstart-idiomatic.rego").into(),
        )],
        data: config.policy.data.clone(),
        query: "data.toolgate.decision".into(),
        mode: Default::default(),
    })
    .unwrap();
    let chained = Policy::compile(&config.policy).unwrap();
    let chain = chain_value(&[
        entry(1, "ticket.read", "SUP-3"),
        entry(2, "ticket.comment", "SUP-3"),
        entry(3, "ticket.read", "SUP-12"),
        entry(4, "payment.read", "P-1"),
    ]);
    let issue = |id: &str| vec![(Arc::from("issue"), json!(id))];
    let amount = |a: &str| vec![(Arc::from("amount"), json!(a))];
    // (case, action, attributes, method, path): the first branch of the chain, a chain rule
    // that holds, one that does not (a deny), a branch far down the chain, a held payment.
    let cases = [
        (
            "ticket_read",
            "ticket.read",
            issue("SUP-12"),
            "GET",
            "/rest/api/3/issue/SUP-12",
        ),
        (
            "ticket_transition",
            "ticket.transition",
            issue("SUP-12"),
            "POST",
            "/rest/api/3/issue/SUP-12/transitions",
        ),
        (
            "ticket_transition_unread",
            "ticket.transition",
            issue("SUP-99"),
            "POST",
            "/rest/api/3/issue/SUP-99/transitions",
        ),
        (
            "payment_create",
            "payment.create",
            amount("50"),
            "POST",
            "/v1/payments",
        ),
        (
            "payment_create_held",
            "payment.create",
            amount("500"),
            "POST",
            "/v1/payments",
        ),
    ];
    let mut g = c.benchmark_group("quickstart_form");
    for (case, action, attributes, method, path) in &cases {
        let tool = if action.starts_with("payment") {
            "payments"
        } else {
            "jira"
        };
        let input = Input {
            agent_id: &config.agent.id,
            agent_claims: None,
            task_id: "T-42",
            task_claims: None,
            task_verified: false,
            action,
            tool: Some(tool),
            attributes,
            request: RequestView {
                method,
                scheme: "https",
                host: "jira.example.com",
                port: 443,
                path,
                params: &[],
                headers,
                hidden: &[],
                body: None,
            },
            state: View::of_chain(chain.clone()),
            now: SystemTime::now(),
        }
        .to_value();
        let want = chained.evaluate(input.clone(), Evaluator::Rvm).unwrap();
        let got = idiomatic.evaluate(input.clone(), Evaluator::Rvm).unwrap();
        assert_eq!(
            got, want,
            "{case}: the idiomatic quickstart must decide as the else chain"
        );
        assert_eq!(
            idiomatic
                .evaluate(input.clone(), Evaluator::Interpreter)
                .unwrap(),
            want,
            "{case}: the interpreter must agree"
        );
        g.bench_function(format!("else_chain/{case}"), |b| {
            b.iter(|| chained.evaluate(input.clone(), Evaluator::Rvm).unwrap())
        });
        g.bench_function(format!("idiomatic/{case}"), |b| {
            b.iter(|| idiomatic.evaluate(input.clone(), Evaluator::Rvm).unwrap())
        });
    }
    g.finish();
}

/// The load bench's read: allowed after scanning every earlier action of the task.
fn chain_scan(c: &mut Criterion, headers: &HeaderMap) {
    let compile = |name: &str, text: &str| {
        Policy::compile(&toolgate_policy::config::PolicySource {
            modules: vec![(name.into(), text.into())],
            data: json!({}),
            query: "data.toolgate.decision".into(),
            mode: Default::default(),
        })
        .unwrap()
    };
    let policy = compile("load-policy.rego", include_str!("data/load-policy.rego"));
    let idiomatic = compile(
        "idiomatic-policy.rego",
        include_str!("data/idiomatic-policy.rego"),
    );
    let attributes = vec![(Arc::from("item"), json!("42"))];
    let mut g = c.benchmark_group("chain_rule");
    for n in [16u64, 64] {
        let entries: Vec<ChainEntry> = (1..=n)
            .map(|seq| ChainEntry {
                action: "item.read".into(),
                tool: Some("tool".into()),
                attributes: vec![(Arc::from("item"), json!(seq.to_string()))],
                ..entry(seq, "item.read", "")
            })
            .collect();
        let input = Input {
            agent_id: "spiffe://bench/agent",
            agent_claims: None,
            task_id: "default-1",
            task_claims: None,
            task_verified: false,
            action: "item.read",
            tool: Some("tool"),
            attributes: &attributes,
            request: RequestView {
                method: "GET",
                scheme: "http",
                host: "localhost",
                port: 80,
                path: "/items/42",
                params: &[],
                headers,
                hidden: &[],
                body: None,
            },
            state: View::of_chain(chain_value(&entries)),
            now: SystemTime::now(),
        }
        .to_value();
        assert!(policy.decide(input.clone()).allowed());
        assert!(idiomatic.decide(input.clone()).allowed());
        g.bench_function(format!("rvm_{n}_earlier_actions"), |b| {
            b.iter(|| policy.evaluate(input.clone(), Evaluator::Rvm).unwrap())
        });
        g.bench_function(format!("idiomatic_rvm_{n}_earlier_actions"), |b| {
            b.iter(|| idiomatic.evaluate(input.clone(), Evaluator::Rvm).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
