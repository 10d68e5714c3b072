use serde_json::json;

use super::*;
use crate::config::PolicyMode;

fn source(text: &str) -> PolicySource {
    PolicySource {
        modules: vec![("p.rego".into(), text.into())],
        data: json!({"limits": {"payment_max": 100, "approval_max": 10000}}),
        query: "data.toolgate.decision".into(),
        mode: PolicyMode::Enforce,
    }
}

fn produced_by(text: &str, input: serde_json::Value) -> Vec<(u32, &'static str, String)> {
    explain(&source(text), &input)
        .unwrap()
        .produced_by
        .into_iter()
        .map(|l| (l.line, l.kind, l.text))
        .collect()
}

const SEPARATE: &str = r#"package toolgate
import rego.v1

default decision := {"allow": false}

decision := {"allow": true} if input.action.name == "read"

decision := {"allow": true} if {
	input.action.name == "list"   # a comment before the brace
}

decision := {"allow": false, "reason": "no"} if { input.action.name == "delete"; input.x == 1 }
"#;

#[test]
fn each_kind_of_body_is_found_where_it_is_written() {
    assert_eq!(
        produced_by(SEPARATE, json!({"action": {"name": "read"}})),
        [(
            6,
            "rule",
            r#"decision := {"allow": true} if input.action.name == "read""#.to_string()
        )]
    );
    assert_eq!(
        produced_by(SEPARATE, json!({"action": {"name": "list"}})),
        [(8, "rule", r#"decision := {"allow": true} if {"#.to_string())]
    );
    assert_eq!(
        produced_by(SEPARATE, json!({"action": {"name": "delete"}, "x": 1})),
        [(12, "rule", r#"decision := {"allow": false, "reason": "no"} if { input.action.name == "delete"; input.x == 1 }"#.to_string())]
    );
    // A body that failed half-way is not the producer: the default is.
    assert_eq!(
        produced_by(SEPARATE, json!({"action": {"name": "delete"}, "x": 2})),
        [(
            4,
            "default",
            r#"default decision := {"allow": false}"#.to_string()
        )]
    );
}

#[test]
fn the_quickstart_chain_names_the_branch_that_held() {
    let text = include_str!("../../../examples/quickstart/policy/toolgate.rego");
    let mut s = source(text);
    s.modules[0].0 = "toolgate.rego".into();
    let line_of = |needle: &str| -> u32 {
        let i = text.lines().position(|l| l.contains(needle)).unwrap();
        u32::try_from(i + 1).unwrap()
    };
    let read = explain(&s, &json!({"action": {"name": "ticket.read", "tool": "jira", "attributes": {"issue": "SUP-1"}}, "chain": []})).unwrap();
    assert_eq!(read.result["allow"], Value::from(true));
    assert_eq!(read.produced_by.len(), 1);
    assert_eq!(
        (read.produced_by[0].line, read.produced_by[0].kind),
        (line_of("reading tickets is allowed"), "rule")
    );
    let chain = json!([{"seq": 1, "action": "ticket.read", "decision": "allow", "pending": false, "outcome": "response", "status": 200, "attributes": {"issue": "SUP-1"}}]);
    let moved = explain(&s, &json!({"action": {"name": "ticket.transition", "tool": "jira", "attributes": {"issue": "SUP-1"}}, "chain": chain})).unwrap();
    assert_eq!(
        (moved.produced_by[0].line, moved.produced_by[0].kind),
        (line_of("was read earlier in this task"), "else")
    );
    let refused = explain(&s, &json!({"action": {"name": "ticket.transition", "tool": "jira", "attributes": {"issue": "SUP-1"}}, "chain": []})).unwrap();
    assert_eq!(
        refused.produced_by[0].line,
        line_of("in this task before changing it")
    );
    assert_eq!(refused.produced_by[0].file, "toolgate.rego");
    let nothing = explain(
        &s,
        &json!({"action": {"name": "ticket.fly", "tool": "jira", "attributes": {}}, "request": {}}),
    )
    .unwrap();
    assert_eq!(nothing.produced_by[0].kind, "default");
}

#[test]
fn an_unconditional_else_holds_when_nothing_before_it_did() {
    let text = "package toolgate\nimport rego.v1\n\ndecision := 1 if {\n\tinput.a\n} else := 2 if {\n\tinput.b\n} else := 3\n";
    assert_eq!(produced_by(text, json!({"a": true}))[0].0, 4);
    assert_eq!(produced_by(text, json!({"b": true}))[0].0, 6);
    assert_eq!(produced_by(text, json!({}))[0].0, 8);
}
