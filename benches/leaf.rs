//! Interception certificate cost: minting a leaf for a new host (one ECDSA P-256 signature by
//! the CA), and a cache hit for a host already seen (what every later tunnel pays).
//!
//! cargo bench --bench leaf
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use toolgate_proxy::ca::{generate, Authority};

// The allocator the toolgate binary runs with (src/main.rs), so costs match the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key) = generate("bench CA", 1).unwrap();
    let ca = Authority::from_pem(cert.as_bytes(), key.as_bytes(), 1024).unwrap();
    c.bench_function("mint leaf (dns name)", |b| {
        b.iter(|| ca.mint("jira.example.com").unwrap())
    });
    c.bench_function("mint leaf (ip address)", |b| {
        b.iter(|| ca.mint("192.0.2.7").unwrap())
    });
    ca.leaf("jira.example.com").unwrap();
    c.bench_function("leaf cache hit", |b| {
        b.iter(|| ca.leaf("jira.example.com").unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
