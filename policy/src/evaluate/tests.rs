use std::time::{Duration, UNIX_EPOCH};

use http::HeaderMap;
use serde_json::json;

use super::*;
use crate::chain::Outcome;

fn policy(rego: &str) -> Policy {
    Policy::compile(&PolicySource {
        modules: vec![("test.rego".into(), rego.into())],
        data: json!({"limits": {"payment": 100}}),
        query: "data.toolgate.decision".into(),
        mode: Default::default(),
    })
    .unwrap()
}

fn input(action: &str, headers: &HeaderMap, chain: &[ChainEntry]) -> Value {
    let attrs = vec![(Arc::from("amount"), json!(250))];
    Input {
        agent_id: "spiffe://t/agent",
        agent_claims: None,
        task_id: "T-1",
        task_claims: None,
        task_verified: false,
        action,
        tool: Some("pay"),
        attributes: &attrs,
        request: RequestView {
            method: "POST",
            scheme: "https",
            host: "pay.example.com",
            port: 443,
            path: "/v1/payments",
            params: &[
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("b".into(), "3".into()),
            ],
            headers,
            hidden: &[],
            body: None,
        },
        state: View::of_chain(chain_value(chain)),
        now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }
    .to_value()
}

const RULES: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this"}

decision := {"allow": true, "reason": "within limit", "credential": {"name": "pay", "scopes": ["payments:write"], "ttl": "30s"}} if {
    input.action.name == "payment.create"
    input.action.attributes.amount <= data.limits.payment
}

decision := {"allow": false, "reason": sprintf("amount %v over limit %v", [input.action.attributes.amount, data.limits.payment])} if {
    input.action.name == "payment.create"
    input.action.attributes.amount > data.limits.payment
}

decision := {"allow": true, "reason": "read first"} if {
    input.action.name == "ticket.close"
    some e in input.chain
    e.action == "ticket.read"
    e.status == 200
}
"#;

#[test]
fn object_decisions_carry_reason_and_credential() {
    let p = policy(RULES);
    let d = p.decide(input("payment.create", &HeaderMap::new(), &[]));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.reason, "amount 250 over limit 100");
}

#[test]
fn chain_is_visible_to_policy() {
    let p = policy(RULES);
    assert_eq!(
        p.decide(input("ticket.close", &HeaderMap::new(), &[]))
            .effect,
        Effect::Deny
    );
    let read = ChainEntry {
        seq: 1,
        action: "ticket.read".into(),
        tool: Some("jira".into()),
        decision: "allow",
        agent: "spiffe://example.org/agent".into(),
        outcome: Some(Outcome::Response(200)),
        attributes: vec![],
        at: UNIX_EPOCH,
    };
    let d = p.decide(input("ticket.close", &HeaderMap::new(), &[read]));
    assert_eq!((d.effect, d.reason.as_str()), (Effect::Allow, "read first"));
}

#[test]
fn credential_obligation_is_parsed() {
    let p = policy(
        r#"package toolgate
decision := {"allow": true, "credential": {"name": "pay", "scopes": ["a", "b"], "ttl": "30s"}}"#,
    );
    let d = p.decide(input("x", &HeaderMap::new(), &[]));
    assert!(d.allowed());
    assert_eq!(d.reason, "allowed by policy");
    assert_eq!(
        d.credential,
        CredentialGrant {
            name: Some("pay".into()),
            scopes: vec!["a".into(), "b".into()],
            ttl: Some(Duration::from_secs(30))
        }
    );
}

#[test]
fn booleans_and_undefined() {
    assert_eq!(
        policy("package toolgate\ndecision := true")
            .decide(input("x", &HeaderMap::new(), &[]))
            .effect,
        Effect::Allow
    );
    assert_eq!(
        policy("package toolgate\ndecision := false")
            .decide(input("x", &HeaderMap::new(), &[]))
            .effect,
        Effect::Deny
    );
    let undefined = policy("package toolgate\ndecision := true if input.nothing").decide(input(
        "x",
        &HeaderMap::new(),
        &[],
    ));
    assert_eq!(undefined.effect, Effect::Error);
}

#[test]
fn malformed_decisions_deny() {
    for rego in [
        r#"decision := {"allow": "yes"}"#,
        r#"decision := {"allow": true, "credential": {"ttl": "soon"}}"#,
        r#"decision := {"allow": true, "approval": "maybe"}"#,
        r#"decision := 42"#,
    ] {
        let d =
            policy(&format!("package toolgate\n{rego}")).decide(input("x", &HeaderMap::new(), &[]));
        assert_eq!(d.effect, Effect::Error, "{rego}");
        assert!(!d.allowed());
        assert!(d.error.is_some());
    }
}

#[test]
fn approval_required_denies_until_an_approval_satisfies_it() {
    let d = policy(
        r#"package toolgate
decision := {"allow": true, "approval": "required"}"#,
    )
    .decide(input("x", &HeaderMap::new(), &[]));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.approval, Some(crate::approval::Ask::default()));
    assert_eq!(d.outcome(), "approval");
    assert_eq!(d.reason, "human approval required");
    let satisfied = d.satisfied_by_approval();
    assert_eq!(satisfied.effect, Effect::Allow);
    // A plain deny is not turned into an allow by an approval.
    let denied =
        policy("package toolgate\ndecision := false").decide(input("x", &HeaderMap::new(), &[]));
    assert_eq!(denied.satisfied_by_approval().effect, Effect::Deny);
}

#[test]
fn the_approval_object_is_parsed_with_every_field() {
    let d = policy(
        r#"package toolgate
decision := {"allow": false, "reason": "over the limit", "approval": {
    "required": true, "approvers": ["group:payments-leads", "alice"], "ttl": "10m",
    "reason": "a payment over 100 EUR", "wait": "30s"}}"#,
    )
    .decide(input("x", &HeaderMap::new(), &[]));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.reason, "over the limit");
    let ask = d.approval.unwrap();
    assert_eq!(ask.approvers, ["group:payments-leads", "alice"]);
    assert_eq!(ask.ttl, Some(std::time::Duration::from_secs(600)));
    assert_eq!(ask.wait, Some(std::time::Duration::from_secs(30)));
    assert_eq!(ask.reason.as_deref(), Some("a payment over 100 EUR"));

    // `required: false` asks for nothing: the decision is what `allow` says.
    let d = policy(
        r#"package toolgate
decision := {"allow": true, "approval": {"required": false, "ttl": "10m"}}"#,
    )
    .decide(input("x", &HeaderMap::new(), &[]));
    assert_eq!((d.effect, d.approval), (Effect::Allow, None));
}

#[test]
fn malformed_approvals_are_policy_errors() {
    let long = "x".repeat(crate::approval::MAX_REASON_BYTES + 1);
    let many: Vec<String> = (0..=crate::approval::MAX_APPROVERS)
        .map(|i| format!("\"a{i}\""))
        .collect();
    for (approval, says) in [
        (r#""maybe""#.to_string(), "approval must be"),
        ("42".to_string(), "approval must be"),
        (r#"{"approvers": ["a"]}"#.to_string(), "approval.required"),
        (
            r#"{"required": "yes"}"#.to_string(),
            "approval.required must be a boolean",
        ),
        (
            r#"{"required": true, "tll": "10m"}"#.to_string(),
            "unknown key",
        ),
        (
            r#"{"required": true, "ttl": "soon"}"#.to_string(),
            "approval.ttl",
        ),
        (
            r#"{"required": true, "ttl": "500ms"}"#.to_string(),
            "at least 1s",
        ),
        (
            r#"{"required": true, "wait": 30}"#.to_string(),
            "approval.wait must be a string",
        ),
        (
            r#"{"required": true, "approvers": "alice"}"#.to_string(),
            "must be an array",
        ),
        (
            r#"{"required": true, "approvers": [1]}"#.to_string(),
            "must hold strings",
        ),
        (
            r#"{"required": true, "approvers": ["a\nb"]}"#.to_string(),
            "is not a name",
        ),
        (
            format!(r#"{{"required": true, "approvers": [{}]}}"#, many.join(",")),
            "at most 16",
        ),
        (
            format!(
                r#"{{"required": true, "reason": concat("", [x | numbers.range(1, {})[_]; x := "r"])}}"#,
                long.len()
            ),
            "at most 1024 bytes",
        ),
    ] {
        let d = policy(&format!(
            "package toolgate\ndecision := {{\"allow\": true, \"approval\": {approval}}}"
        ))
        .decide(input("x", &HeaderMap::new(), &[]));
        assert_eq!(d.effect, Effect::Error, "{approval}");
        let detail = d.error.unwrap_or_default();
        assert!(detail.contains(says), "{approval}: {detail}");
    }
}

#[test]
fn credential_headers_never_reach_input() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("authorization", "Bearer agent"),
        ("x-api-key", "k"),
        ("cookie", "c"),
        ("content-type", "application/json"),
    ] {
        h.insert(k, v.parse().unwrap());
    }
    let p = policy(
        r#"package toolgate
decision := {"allow": true, "reason": concat(",", sort(object.keys(input.request.headers)))}"#,
    );
    assert_eq!(p.decide(input("x", &h, &[])).reason, "content-type");
}

#[test]
fn repeated_query_keys_become_lists() {
    let p = policy(
        r#"package toolgate
decision := {"allow": true, "reason": sprintf("%v %v", [input.request.query.a, input.request.query.b])}"#,
    );
    assert_eq!(
        p.decide(input("x", &HeaderMap::new(), &[])).reason,
        r#"1 ["2", "3"]"#
    );
}

#[test]
fn rvm_and_interpreter_agree() {
    let p = policy(RULES);
    assert_eq!(p.evaluator(), Evaluator::Rvm, "{:?}", p.rvm_unsupported());
    for action in ["payment.create", "ticket.close", "other"] {
        let i = input(action, &HeaderMap::new(), &[]);
        assert_eq!(
            p.evaluate(i.clone(), Evaluator::Rvm),
            p.evaluate(i, Evaluator::Interpreter),
            "{action}"
        );
    }
}

#[test]
fn endless_policy_hits_the_limit() {
    let p = policy(
        r#"package toolgate
import rego.v1
decision := {"allow": true} if {
    count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j]) > 0
}"#,
    );
    let d = p.decide(input("x", &HeaderMap::new(), &[]));
    assert_eq!(d.effect, Effect::Error);
    assert_eq!(d.reason, decision::LIMIT_EXCEEDED, "{:?}", d.error);
}

#[test]
fn syntax_errors_name_file_and_line() {
    let e = Policy::compile(&PolicySource {
        modules: vec![(
            "policy/bad.rego".into(),
            "package toolgate\n\ndecision := {\n".into(),
        )],
        data: json!({}),
        query: "data.toolgate.decision".into(),
        mode: Default::default(),
    })
    .unwrap_err();
    assert_eq!(e.0, "policy/bad.rego:4:1: expecting expression");
}

#[test]
fn revision_changes_with_content() {
    assert_ne!(
        policy("package toolgate\ndecision := true").revision(),
        policy("package toolgate\ndecision := false").revision()
    );
}

#[test]
fn builtin_errors_are_undefined_in_both_evaluators() {
    let p = policy(
        r#"package toolgate
import rego.v1
default decision := {"allow": false, "reason": "not a number"}
decision := {"allow": true} if to_number(input.action.name) > 0"#,
    );
    let i = input("lots", &HeaderMap::new(), &[]);
    let rvm = p.evaluate(i.clone(), Evaluator::Rvm);
    assert_eq!(rvm, p.evaluate(i.clone(), Evaluator::Interpreter));
    assert_eq!(p.decide(i).reason, "not a number");
}

#[test]
fn else_after_an_empty_iteration_tries_the_next_body() {
    // vendor/regorus/TOOLGATE.md, patch 8: unpatched, the RVM ended each of these chains
    // with the default ("default") where the interpreter and OPA say "second"; toolgate used
    // to send such policies to the interpreter.
    for rego in [
        "decision := \"first\" if { some x in input.chain; x == 1 } else := \"second\"",
        "decision := \"first\" if { input.chain[_] == 1 } else := \"second\"",
        "decision := \"first\" if { input.chain[i] == 1 } else := \"second\"",
    ] {
        let p = policy(&format!(
            "package toolgate\nimport rego.v1\ndefault decision := \"default\"\n{rego}"
        ));
        assert_eq!(p.evaluator(), Evaluator::Rvm, "{rego}");
        for evaluator in [Evaluator::Rvm, Evaluator::Interpreter] {
            assert_eq!(
                p.evaluate(input("x", &HeaderMap::new(), &[]), evaluator),
                Ok(Value::from("second")),
                "{rego} on {evaluator:?}"
            );
        }
    }
}

/// The vendored regorus compiles the bodies of one definition into one shared register
/// window (vendor/regorus/TOOLGATE.md, patch 3): a long `else` chain stays on the RVM, and
/// bodies that reuse registers — loops, function parameters, partial rules with several
/// definitions — decide exactly as the interpreter does.
#[test]
fn else_chain_bodies_share_one_register_window() {
    // 60 branches of ~8 registers each: 480 registers as a sum, past the RVM's 255.
    let branches: Vec<String> = (0..60)
        .map(|n| {
            format!(
                "{{\"allow\": true, \"reason\": r}} if {{\n  input.action.name == \"a{n}\"\n  \
                 r := concat(\"\", [input.request.host, \" {n}\"])\n  count(r) > 0\n}}"
            )
        })
        .collect();
    let chain = format!(
        "package toolgate\nimport rego.v1\n\
         default decision := {{\"allow\": false, \"reason\": \"none\"}}\n\
         decision := {}",
        branches.join(" else := ")
    );
    let p = policy(&chain);
    assert_eq!(p.evaluator(), Evaluator::Rvm, "{:?}", p.rvm_unsupported());
    let h = HeaderMap::new();
    for (action, reason) in [
        ("a0", "pay.example.com 0"),
        ("a31", "pay.example.com 31"),
        ("a59", "pay.example.com 59"),
        ("b", "none"),
    ] {
        let i = input(action, &h, &[]);
        assert_eq!(
            p.evaluate(i.clone(), Evaluator::Rvm),
            p.evaluate(i.clone(), Evaluator::Interpreter),
            "{action}"
        );
        assert_eq!(p.decide(i).reason, reason, "{action}");
    }

    let p = policy(
        r#"package toolgate
import rego.v1

# A function whose else bodies reuse the parameter's registers.
label(n) := "big" if { n > 200 } else := "medium" if { n > 100 } else := "small"

# A partial set with several definitions and a loop in a later one.
seen contains entry.action if { some entry in input.chain; entry.status < 400 }
seen contains "current" if { input.action.name != "" }
seen contains upper(input.action.name) if { startswith(input.action.name, "pay") }

# A partial object, keys from two definitions.
facts[k] := v if { some k, v in {"tool": input.action.tool} }
facts[k] := label(input.action.attributes.amount) if { k := "label" }

current if "current" in seen
denied_earlier if { some entry in input.chain; entry.decision == "deny" }

decision := {"allow": true, "reason": sprintf("%v %v", [sort(seen), facts])} if {
    current
    facts.label != "small"
} else := {"allow": false, "reason": label(input.action.attributes.amount)} if {
    denied_earlier
} else := {"allow": false, "reason": "fallthrough"}"#,
    );
    assert_eq!(p.evaluator(), Evaluator::Rvm, "{:?}", p.rvm_unsupported());
    let earlier = [ChainEntry {
        seq: 1,
        action: "payment.read".into(),
        tool: Some("pay".into()),
        decision: "allow",
        agent: "spiffe://example.org/agent".into(),
        outcome: Some(Outcome::Response(200)),
        attributes: vec![],
        at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }];
    for action in ["payment.create", "ticket.close"] {
        for chain in [&earlier[..], &[]] {
            let i = input(action, &h, chain);
            let rvm = p.evaluate(i.clone(), Evaluator::Rvm);
            assert_eq!(rvm, p.evaluate(i, Evaluator::Interpreter), "{action}");
            assert!(rvm.is_ok(), "{action}: {rvm:?}");
        }
    }
    assert_eq!(
        p.decide(input("payment.create", &h, &earlier)).reason,
        r#"["PAYMENT.CREATE", "current", "payment.read"] {"label": "big", "tool": "pay"}"#
    );
}

/// vendor/regorus/TOOLGATE.md, patch 8: a body that ends without a value (an assignment from
/// an undefined reference) fails, and the next `else` body is tried — on the RVM as in the
/// interpreter. Unpatched, the RVM returned the default ("default") for the first input.
#[test]
fn else_after_an_undefined_assignment_tries_the_next_body() {
    let p = policy(
        "package toolgate\nimport rego.v1\ndefault decision := \"default\"\n\
         decision := m if { m := input.request.body.missing } \
         else := concat(\"\", [\"second \", input.action.name]) if { n := input.action.name; n != \"\" } \
         else := \"third\"",
    );
    assert_eq!(p.evaluator(), Evaluator::Rvm, "{:?}", p.rvm_unsupported());
    let i = input("x", &HeaderMap::new(), &[]);
    for evaluator in [Evaluator::Rvm, Evaluator::Interpreter] {
        assert_eq!(
            p.evaluate(i.clone(), evaluator),
            Ok(Value::from("second x")),
            "{evaluator:?}"
        );
    }
}

/// A worker thread evaluates the live and the shadow policy on every request, and finishes
/// requests on a replaced version after a reload: each keeps its own VM, and a thread that
/// sees more versions than it keeps still answers each with its own program.
#[test]
fn policies_evaluated_in_turn_on_one_thread_each_decide_with_their_own_program() {
    let policies: Vec<Policy> = (0..VMS_PER_THREAD + 2)
        .map(|i| {
            policy(&format!(
                "package toolgate\nimport rego.v1\ndecision := {{\"allow\": {}, \"reason\": \"v{i}\"}}\n",
                i % 2 == 0
            ))
        })
        .collect();
    let headers = HeaderMap::new();
    for round in 0..3 {
        for (i, p) in policies.iter().enumerate() {
            assert_eq!(p.evaluator(), Evaluator::Rvm);
            let d = p.decide(input("x", &headers, &[]));
            assert_eq!(
                (d.allowed(), d.reason.as_str()),
                (i % 2 == 0, format!("v{i}").as_str()),
                "round {round}, policy {i}"
            );
        }
    }
    let kept = VMS.with(|v| v.borrow().loaded.len());
    assert_eq!(kept, VMS_PER_THREAD);
}
