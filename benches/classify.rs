//! Classification cost as the catalog grows: 10, 100 and 1,000 actions, generated as REST-like
//! templates (literal resource names, `{id}` captures, sub-resources, several methods).
//!
//! `classify`: one tool holding all N actions, one request for an action deep in the
//! catalog (a capture plus a literal sub-resource, with a path attribute).
//! `prepare`: N actions spread over N/10 tools (one host each), the whole head of the
//! pipeline: accept (absolute-form) → normalise → classify.
//!
//! cargo bench --bench classify
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::HeaderMap;
use toolgate_policy::classify::{Action, AttributeSource, Catalog, Overrides, Protocol, ToolSpec};
use toolgate_policy::config::{Config, EmbeddedFiles, StaticEnv};
use toolgate_policy::normalise;
use toolgate_policy::prepare::prepare;

// The allocator the toolgate binary runs with (src/main.rs), so costs match the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZES: [usize; 3] = [10, 100, 1_000];

/// The i-th generated action: 10 shapes per resource, resources `res{i/10}`.
fn shape(i: usize) -> (&'static str, String) {
    let r = i / 10;
    match i % 10 {
        0 => ("GET", format!("/api/v1/res{r}")),
        1 => ("POST", format!("/api/v1/res{r}")),
        2 => ("GET", format!("/api/v1/res{r}/{{id}}")),
        3 => ("PUT", format!("/api/v1/res{r}/{{id}}")),
        4 => ("DELETE", format!("/api/v1/res{r}/{{id}}")),
        5 => ("GET", format!("/api/v1/res{r}/{{id}}/items")),
        6 => ("POST", format!("/api/v1/res{r}/{{id}}/items")),
        7 => ("GET", format!("/api/v1/res{r}/{{id}}/items/{{item}}")),
        8 => ("PATCH", format!("/api/v1/res{r}/{{id}}/items/{{item}}")),
        _ => ("GET", format!("/api/v1/res{r}/search")),
    }
}

fn action(i: usize) -> Action {
    let (method, path) = shape(i);
    Action {
        name: Arc::from(format!("res.action{i}")),
        method: Some(method.parse().unwrap()),
        template: path.parse().unwrap(),
        body: Vec::new(),
        attributes: vec![(Arc::from("id"), AttributeSource::Path(0))],
        labels: Vec::new(),
        upgrade: None,
    }
}

fn one_tool(n: usize) -> Catalog {
    let mut c = Catalog::new();
    c.push(ToolSpec {
        name: "api".into(),
        hosts: vec!["api.example.com".into()],
        upstream: None,
        credential: None,
        intercept: true,
        protocol: Protocol::Http,
        labels: Vec::new(),
        overrides: Overrides::Refuse,
        actions: (0..n)
            .map(|i| {
                // Attributes only on shapes that capture.
                let mut a = action(i);
                if !matches!(i % 10, 2..=8) {
                    a.attributes.clear();
                }
                a
            })
            .collect(),
    });
    c
}

fn many_tools(n: usize) -> Config {
    let mut yaml =
        String::from("agent: { id: spiffe://bench/agent }\npolicy: { files: [p.rego] }\ntools:\n");
    for t in 0..n / 10 {
        yaml.push_str(&format!(
            "  - name: tool{t}\n    hosts: [tool{t}.example.com]\n    actions:\n"
        ));
        for i in 0..10 {
            let (method, path) = shape(t * 10 + i);
            let attrs = if matches!(i, 2..=8) {
                ", attributes: { id: \"path:id\" }"
            } else {
                ""
            };
            yaml.push_str(&format!(
                "      - {{ name: a{i}, match: {{ method: {method}, path: \"{path}\" }}{attrs} }}\n"
            ));
        }
    }
    let yaml: &'static [u8] = Box::leak(yaml.into_bytes().into_boxed_slice());
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml),
        ("p.rego", b"package toolgate\ndecision := false\n"),
    ]);
    Config::load_from(
        Path::new("toolgate.yaml"),
        &files,
        &StaticEnv(Default::default()),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("classify");
    for n in SIZES {
        let catalog = one_tool(n);
        // Resource n/2 - 1, shape 6: POST /api/v1/res{r}/{id}/items.
        let r = n / 20;
        let target = format!("/api/v1/res{r}/SUP-12/items");
        let request = normalise::request("POST", target.as_bytes()).unwrap();
        let got = catalog.classify(Some(0), &request, &headers).unwrap();
        assert_eq!(&*got.action, format!("res.action{}", r * 10 + 6));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| catalog.classify(Some(0), &request, &headers).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("prepare");
    for n in SIZES {
        let config = many_tools(n);
        let t = n / 20;
        let target = format!(
            "http://tool{t}.example.com/api/v1/res{}/SUP-12/items",
            t * 10 / 10
        );
        let got = prepare(&config, "POST", target.as_bytes(), &headers, None).unwrap();
        assert_eq!(&*got.classification.action, "a6", "{target}");
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| prepare(&config, "POST", target.as_bytes(), &headers, None).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
