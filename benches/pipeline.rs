//! The whole in-process pipeline for one request, no sockets: accept → normalise → classify →
//! evaluate (input document + RVM, with the task's chain) → record in the chain → credential
//! (selection, and minting an EdDSA JWT when the credential is `kind: jwt`), on the quickstart
//! configuration.
//!
//! cargo bench --bench pipeline
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use toolgate_policy::chain::{self, Ledger, TaskKey};
use toolgate_policy::config::{Config, CredentialSpec, EmbeddedFiles, StaticEnv};
use toolgate_policy::evaluate::{Input, Policy, RequestView};
use toolgate_policy::prepare::prepare;
use toolgate_proxy::credential::mint::{mint, Subject};

// The allocator the toolgate binary runs with (src/main.rs), so costs match the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const READ: &[u8] = b"http://jira.example.com/rest/api/3/issue/SUP-12";
const SECRET: &str =
    "jira-token: { kind: secret, file: secrets/jira-token, header: Authorization, format: \"Bearer {}\" }";
const JWT: &str =
    "jira-token: { kind: jwt, audience: jira.example.com, key_file: signing.pem, max_ttl: 60s }";

fn leak(bytes: Vec<u8>) -> &'static [u8] {
    Box::leak(bytes.into_boxed_slice())
}

/// The quickstart, with jira's credential either as shipped (a secret) or as a minted JWT.
fn quickstart(jwt: bool) -> Config {
    let yaml = include_str!("../examples/quickstart/toolgate.yaml");
    assert!(
        yaml.contains(SECRET),
        "the quickstart's jira credential changed"
    );
    let yaml = if jwt {
        yaml.replace(SECRET, JWT)
    } else {
        yaml.to_string()
    };
    let key = toolgate_policy::config::generate_ed25519_pem().unwrap();
    // The embedded quickstart, its toolgate.yaml replaced, plus the signing key.
    let mut files: Vec<(&str, &'static [u8])> = toolgate_policy::quickstart::FILES
        .iter()
        .filter(|(name, _)| *name != "toolgate.yaml")
        .copied()
        .collect();
    files.push(("toolgate.yaml", leak(yaml.into_bytes())));
    files.push(("signing.pem", leak(key.into_bytes())));
    let files = EmbeddedFiles::new(&files);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap()
}

/// One request through every stage; returns the minted token's length (or 0) so nothing is
/// optimised away.
fn one_request(config: &Config, policy: &Policy, ledger: &Ledger, headers: &HeaderMap) -> usize {
    let prepared = prepare(config, "GET", READ, headers, None).unwrap();
    let class = &prepared.classification;
    let tool = class.tool.and_then(|t| config.catalog.tool(t));
    let accepted = &prepared.accepted;
    let now = SystemTime::now();
    let task = TaskKey::named("T-1");
    let decision = policy.decide(
        Input {
            agent_id: &config.agent.id,
            agent_claims: None,
            task_id: "T-1",
            task_claims: None,
            task_verified: false,
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
                headers,
                hidden: &[],
                body: None,
            },
            state: ledger.view(&task, &config.agent.id, now),
            now,
        }
        .to_value(),
    );
    assert!(decision.allowed());
    let seq = ledger.record(
        &task,
        &chain::Action {
            action: &class.action,
            tool: tool.map(|t| &*t.name),
            agent: &config.agent.id,
            decision: decision.effect.as_str(),
            dry_run: false,
            attributes: &class.attributes,
            labels: &decision.labels,
            at: now,
        },
    );
    ledger.settle(&task, seq, chain::Outcome::Response(200));
    let selected = toolgate_proxy::credential::select(config, tool, &decision.credential)
        .unwrap()
        .unwrap();
    match selected.spec {
        CredentialSpec::Jwt(spec) => {
            let subject = Subject {
                agent: &config.agent.id,
                task: "T-1",
                action: &class.action,
                act: None,
                approval: None,
                not_after: None,
            };
            mint(spec, &decision.credential, &subject, now)
                .unwrap()
                .token
                .len()
        }
        _ => 0,
    }
}

fn bench(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("host", "jira.example.com".parse().unwrap());
    headers.insert("user-agent", "agent/1.0".parse().unwrap());
    headers.insert("authorization", "Bearer agent-own".parse().unwrap());

    let mut g = c.benchmark_group("pipeline");
    let secret = quickstart(false);
    g.bench_function("prepare", |b| {
        b.iter(|| prepare(&secret, "GET", READ, &headers, None).unwrap())
    });
    for (name, config) in [
        ("request_to_secret", secret),
        ("request_to_minted_jwt", quickstart(true)),
    ] {
        let policy = Policy::compile(&config.policy).unwrap();
        let ledger = Ledger::new(&config.chain);
        g.bench_function(name, |b| {
            b.iter(|| one_request(&config, &policy, &ledger, &headers))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
