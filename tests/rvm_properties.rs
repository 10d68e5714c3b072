//! The RVM against the interpreter on generated policies and inputs: policies written the way
//! users write Rego — `else` chains, separate complete rules, helper rules that scan
//! `input.chain`, partial sets, functions, `every`, `not`, assignments from references that may
//! be undefined — evaluated on generated inputs must give the identical result on both
//! evaluators. The interpreter is the oracle (it agrees with OPA); a disagreement is an RVM
//! bug, which toolgate fixes in `vendor/regorus` (see its TOOLGATE.md) or steers around.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use serde_json::{json, Value as Json};
use toolgate_policy::config::{PolicyMode, PolicySource};
use toolgate_policy::evaluate::{Evaluator, Policy};

/// Field names inputs use and policies read (some present, some never).
const FIELDS: [&str; 4] = ["a", "b", "c", "missing"];
/// Values inputs hold and policies compare with.
const VALUES: [&str; 5] = ["1", "2", "\"x\"", "\"y\"", "true"];

fn field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&FIELDS[..])
}

fn value() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&VALUES[..])
}

/// One literal of a rule body. `helpers` is how many helper rules exist (h0…); none are
/// referred to when there are none.
fn literal(helpers: usize) -> BoxedStrategy<String> {
    let mut options: Vec<BoxedStrategy<String>> = vec![
        (field(), value())
            .prop_map(|(f, v)| format!("input.{f} == {v}"))
            .boxed(),
        (field(), value())
            .prop_map(|(f, v)| format!("input.{f} != {v}"))
            .boxed(),
        (field(), 0..3i32)
            .prop_map(|(f, n)| format!("input.{f} > {n}"))
            .boxed(),
        field().prop_map(|f| format!("not input.{f}")).boxed(),
        (field(), value())
            .prop_map(|(f, v)| format!("some e@ in input.chain; e@.{f} == {v}"))
            .boxed(),
        (field(), value())
            .prop_map(|(f, v)| format!("input.chain[_].{f} == {v}"))
            .boxed(),
        (field(), value())
            .prop_map(|(f, v)| format!("input.chain[i@].{f} == {v}; i@ >= 0"))
            .boxed(),
        (field(), value())
            .prop_map(|(f, v)| format!("v@ := input.{f}; v@ == {v}"))
            .boxed(),
        field().prop_map(|f| format!("m@ := input.{f}; m@")).boxed(),
        (0..3usize)
            .prop_map(|n| format!("count(input.chain) > {n}"))
            .boxed(),
        (field(), value())
            .prop_map(|(f, v)| format!("every e@ in input.chain {{ e@.{f} != {v} }}"))
            .boxed(),
        (field(), value())
            .prop_map(|(f, v)| format!("f(input.{f}, {v})"))
            .boxed(),
        value().prop_map(|v| format!("{v} in seen")).boxed(),
        Just("true".to_string()).boxed(),
    ];
    if helpers > 0 {
        options.push((0..helpers).prop_map(|n| format!("h{n}")).boxed());
        options.push((0..helpers).prop_map(|n| format!("not h{n}")).boxed());
    }
    prop::strategy::Union::new(options).boxed()
}

fn body(helpers: usize) -> impl Strategy<Value = String> {
    // Each literal's variables get its own suffix, as a person would name them.
    prop::collection::vec(literal(helpers), 1..4).prop_map(|ls| {
        ls.iter()
            .enumerate()
            .map(|(i, l)| l.replace('@', &i.to_string()))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// A generated policy: helper rules, then the decision as an `else` chain or as separate
/// complete rules (which must not conflict: each yields a distinct object only under
/// disjoint conditions, so they get a shared `reason`-free shape).
fn policy() -> impl Strategy<Value = String> {
    (0..4usize)
        .prop_flat_map(|helpers| {
            (
                Just(helpers),
                prop::collection::vec(body(0), helpers..=helpers),
                prop::collection::vec(body(helpers), 1..6),
                any::<bool>(),
                any::<bool>(),
            )
        })
        .prop_map(
            |(helpers, helper_bodies, decision_bodies, chained, objects)| {
                let mut rego = String::from(
                    "package toolgate\nimport rego.v1\ndefault decision := \"default\"\n\
                 f(x, y) if x == y\n\
                 seen contains x if { some e in input.chain; x := e.a }\n",
                );
                for (n, b) in helper_bodies.iter().enumerate().take(helpers) {
                    rego.push_str(&format!("h{n} if {{ {b} }}\n"));
                }
                let val = |i: usize| {
                    if objects {
                        format!("{{\"allow\": {}, \"reason\": \"b{i}\"}}", i % 2 == 0)
                    } else {
                        format!("\"b{i}\"")
                    }
                };
                if chained {
                    for (i, b) in decision_bodies.iter().enumerate() {
                        if i == 0 {
                            rego.push_str(&format!("decision := {} if {{ {b} }}", val(i)));
                        } else {
                            rego.push_str(&format!(" else := {} if {{ {b} }}", val(i)));
                        }
                    }
                    rego.push('\n');
                } else {
                    // Separate complete rules: all yield the same value, so they never conflict.
                    for b in &decision_bodies {
                        rego.push_str(&format!("decision := {} if {{ {b} }}\n", val(0)));
                    }
                }
                rego
            },
        )
}

fn scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(json!(1)),
        Just(json!(2)),
        Just(json!("x")),
        Just(json!("y")),
        Just(json!(true)),
        Just(json!(false)),
        Just(Json::Null),
    ]
}

fn object() -> impl Strategy<Value = Json> {
    prop::collection::btree_map(prop::sample::select(&FIELDS[..3]), scalar(), 0..4)
        .prop_map(|m| Json::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn input() -> impl Strategy<Value = Json> {
    (object(), prop::collection::vec(object(), 0..4)).prop_map(|(top, chain)| {
        let mut doc = top;
        doc.as_object_mut()
            .unwrap()
            .insert("chain".to_string(), Json::Array(chain));
        doc
    })
}

fn compile(rego: &str) -> Policy {
    Policy::compile(&PolicySource {
        modules: vec![("generated.rego".into(), rego.into())],
        data: json!({}),
        query: "data.toolgate.decision".into(),
        mode: PolicyMode::Enforce,
    })
    .unwrap_or_else(|e| panic!("generated policy does not compile: {e}\n{rego}"))
}

proptest! {
    // 384 cases in CI; PROPTEST_CASES=20000 for a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(384),
        ..ProptestConfig::default()
    })]

    #[test]
    fn rvm_and_interpreter_agree_on_generated_policies(
        rego in policy(),
        inputs in prop::collection::vec(input(), 1..4),
    ) {
        let p = compile(&rego);
        prop_assert_eq!(p.evaluator(), Evaluator::Rvm, "the RVM refused: {:?}\n{}", p.rvm_unsupported(), rego);
        for i in inputs {
            let value = toolgate_policy::evaluate::Value::from(i.clone());
            let rvm = p.evaluate(value.clone(), Evaluator::Rvm);
            let interpreter = p.evaluate(value, Evaluator::Interpreter);
            match (&rvm, &interpreter) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "evaluators disagree on {}\n{}", i, rego),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "one evaluator failed: rvm {:?} interpreter {:?} on {}\n{}", rvm, interpreter, i, rego),
            }
        }
    }
}
