//! No delegation request body and no delegation token's claims can panic toolgate: arbitrary
//! bytes and structured JSON built from what an attacker would try (every field, wrong types,
//! deep and cyclic-looking actor chains, bounds and one past them). Whatever is accepted is
//! bounded, and a grant is never wider than what the delegator holds.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use toolgate_policy::config::{Config, EmbeddedFiles, StaticEnv};
use toolgate_policy::delegation::{
    self, agent_ok, Delegation, Own, MAX_AGENT, MAX_DEPTH, MAX_ITEMS, MAX_NAME,
};

const ME: &str = "spiffe://t/agent-b";

fn name() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z]{1,8}\\.[a-z]{1,8}".prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        "\\PC{0,6}".prop_map(Value::from),
        Just(Value::from("x".repeat(MAX_NAME))),
        Just(Value::from("x".repeat(MAX_NAME + 1))),
        any::<i64>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn names() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(name(), 0..6).prop_map(Value::from),
        (0usize..3).prop_map(|extra| Value::from(
            (0..MAX_ITEMS + extra)
                .map(|i| Value::from(format!("a{i}")))
                .collect::<Vec<_>>()
        )),
        name(),
    ]
}

fn agent() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from(ME)),
        "spiffe://t/[a-z-]{1,10}".prop_map(Value::from),
        "[ -~]{0,10}".prop_map(Value::from),
        Just(Value::from("a".repeat(MAX_AGENT + 1))),
        any::<u8>().prop_map(Value::from),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let object = (
        prop::option::of(agent()),
        prop::option::of(names()),
        prop::option::of(names()),
        prop::option::of(prop_oneof![
            "[0-9]{1,4}(ms|s|m|h|d|y)".prop_map(Value::from),
            "-?[0-9]{0,22}s".prop_map(Value::from),
            any::<u32>().prop_map(Value::from),
        ]),
        prop::option::of(name()),
    )
        .prop_map(|(to, actions, scopes, ttl, extra)| {
            let mut m = Map::new();
            for (k, v) in [
                ("to", to),
                ("actions", actions),
                ("scopes", scopes),
                ("ttl", ttl),
                ("extra", extra),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m).to_string().into_bytes()
        });
    prop_oneof![3 => object, 1 => prop::collection::vec(any::<u8>(), 0..256)]
}

/// An `act` chain `depth` levels deep with arbitrary members.
fn act(depth: usize) -> impl Strategy<Value = Value> {
    prop::collection::vec(prop::option::of(agent()), 0..depth + 2).prop_map(|subs| {
        subs.into_iter().rev().fold(Value::Null, |inner, sub| {
            let mut m = Map::new();
            if let Some(s) = sub {
                m.insert("sub".into(), s);
            }
            if !inner.is_null() {
                m.insert("act".into(), inner);
            }
            Value::Object(m)
        })
    })
}

fn claims() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop_oneof![
            (0u64..=MAX_DEPTH + 2).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            Just(json!("1")),
            Just(json!(1.5)),
        ],
        agent(),
        names(),
        prop::option::of(prop_oneof!["[ -~]{0,20}".prop_map(Value::from), names()]),
        act(7),
        prop::option::of(prop_oneof![
            "[a-zA-Z0-9._-]{0,40}".prop_map(Value::from),
            name()
        ]),
        prop::option::of(name()),
    )
        .prop_map(|(depth, sub, actions, scope, act, parent, task)| {
            let mut m = Map::new();
            m.insert("iss".into(), json!("ta"));
            m.insert("depth".into(), depth);
            m.insert("sub".into(), sub);
            m.insert("actions".into(), actions);
            m.insert("act".into(), act);
            if let Some(s) = scope {
                m.insert("scope".into(), s);
            }
            if let Some(p) = parent {
                m.insert("parent".into(), p);
            }
            m.insert("task".into(), task.unwrap_or(json!("T")));
            m
        })
}

fn issuers() -> Config {
    let key = toolgate_policy::config::SigningKey::from_pem(
        toolgate_policy::config::generate_ed25519_pem()
            .unwrap()
            .as_bytes(),
        jsonwebtoken::Algorithm::EdDSA,
    )
    .unwrap();
    let jwks: &'static str = Box::leak(json!({ "keys": [key.jwk()] }).to_string().into_boxed_str());
    let yaml: &'static str = Box::leak(
        format!("agent: {{ id: \"{ME}\" }}\npolicy: {{ files: [p.rego] }}\ntask_tokens: {{ issuers: [{{ issuer: ta, jwks_file: a.json, audience: \"{ME}\" }}] }}\n")
            .into_boxed_str(),
    );
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
        ("a.json", jwks.as_bytes()),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_request_body_panics_and_no_grant_widens(
        body in body(),
        held in prop::option::of(prop::collection::vec("[a-z]{1,3}\\.[a-z]{1,3}", 0..4)),
        depth in 0u64..=MAX_DEPTH + 1,
    ) {
        let Ok(r) = delegation::parse_request(&body) else { return Ok(()) };
        prop_assert!(agent_ok(&r.to));
        prop_assert!(!r.actions.is_empty() && r.actions.len() <= MAX_ITEMS);
        prop_assert!(r.scopes.len() <= MAX_ITEMS);
        prop_assert!(r.actions.iter().chain(&r.scopes).all(|a| !a.is_empty() && a.len() <= MAX_NAME));
        prop_assert!(r.ttl.is_none_or(|t| t.as_secs() >= 1));
        let own = Own { actions: held.clone(), scopes: Some(Vec::new()), depth, task_verified: false, expires: None };
        if let Ok(g) = delegation::grant(&r, &own, "spiffe://t/agent-a") {
            prop_assert!(!g.actions.is_empty());
            prop_assert!(g.actions.iter().all(|a| r.actions.contains(a)));
            if let Some(held) = &held {
                prop_assert!(g.actions.iter().all(|a| held.contains(a)));
            }
            prop_assert!(g.scopes.is_empty());
            prop_assert_eq!(g.depth, depth + 1);
            prop_assert!(g.depth <= MAX_DEPTH);
        }
    }
}

#[test]
fn no_claims_panic_the_receiving_side() {
    let config = issuers();
    let tokens = config.task_tokens.as_ref().unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(1024));
    runner
        .run(&claims(), |claims| {
            if let Ok(Some(d)) = Delegation::from_claims(&claims, ME, tokens) {
                prop_assert!(d.depth >= 1 && d.depth <= MAX_DEPTH);
                prop_assert_eq!(d.agents.len() as u64, d.depth + 1);
                prop_assert_eq!(d.agents.last().map(String::as_str), Some(ME));
                prop_assert!(!d.actions.is_empty() && d.actions.len() <= MAX_ITEMS);
                // Without a verifiable parent only a first hop can be accepted.
                prop_assert_eq!(d.depth, 1);
            }
            Ok(())
        })
        .unwrap();
}
