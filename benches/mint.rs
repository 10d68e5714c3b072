//! Minting one credential (DESIGN.md §9: JWT mint < 30 µs median): the claims of an allowed
//! action signed with the EdDSA key parsed once at load — what the credential stage does per
//! request for a `kind: jwt` credential.
//!
//! cargo bench --bench mint
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use toolgate_policy::config::{Config, CredentialSpec, EmbeddedFiles, StaticEnv};
use toolgate_policy::evaluate::CredentialGrant;
use toolgate_proxy::credential::mint::{mint, Subject};

// The allocator the toolgate binary runs with (src/main.rs), so costs match the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = "agent: { id: spiffe://example.org/ns/support/sa/triage-agent }
policy: { files: [p.rego] }
credentials:
  payments: { kind: jwt, audience: payments.example.com, key_file: mint-key.pem, max_ttl: 60s }
";

fn bench(c: &mut Criterion) {
    // A fresh key per run: no private key is kept in the repository.
    let key: &'static [u8] = Box::leak(
        toolgate_policy::config::generate_ed25519_pem()
            .unwrap()
            .into_bytes()
            .into_boxed_slice(),
    );
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", CONFIG.as_bytes()),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
        ("mint-key.pem", key),
    ]);
    let config =
        Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap();
    let CredentialSpec::Jwt(spec) = &config.credentials["payments"] else {
        panic!("payments is a jwt credential")
    };
    let grant = CredentialGrant {
        name: Some("payments".into()),
        scopes: vec!["payments:write".into()],
        ttl: Some(Duration::from_secs(30)),
    };
    let subject = Subject {
        agent: &config.agent.id,
        task: "T-42",
        action: "payment.create",
        act: None,
        approval: None,
        not_after: None,
    };
    c.bench_function("mint/eddsa", |b| {
        b.iter(|| mint(spec, &grant, &subject, SystemTime::now()).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
