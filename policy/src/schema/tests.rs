use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use serde_json::json;

use super::*;
use crate::chain::{self, Ledger, Outcome, TaskKey};
use crate::config::Config;
use crate::evaluate::{Input, RequestView};

/// Every path of `value` is in `shape`, and every required field of `shape` is in `value`.
fn conforms(value: &Json, shape: &Shape, path: &str, errors: &mut Vec<String>) {
    match (shape, value) {
        (Shape::Any, _) | (Shape::Attributes, Json::Object(_)) => {}
        (Shape::Object(o), Json::Object(map)) => {
            for (k, v) in map {
                let inner = format!("{path}.{k}");
                match (o.fields.iter().find(|f| f.name == k), &o.rest) {
                    (Some(f), _) => conforms(v, &f.shape, &inner, errors),
                    (None, Some(rest)) => conforms(v, rest, &inner, errors),
                    (None, None) => errors.push(format!("{inner} is not in the schema")),
                }
            }
            for f in o.fields.iter().filter(|f| f.required) {
                if !map.contains_key(f.name) {
                    errors.push(format!("{path}.{} is required but absent", f.name));
                }
            }
        }
        (Shape::Array(item), Json::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                conforms(v, item, &format!("{path}[{i}]"), errors);
            }
        }
        (Shape::String, Json::String(_))
        | (Shape::Integer, Json::Number(_))
        | (Shape::Boolean, Json::Bool(_))
        | (Shape::Null, Json::Null) => {}
        (Shape::Either(options), v) => {
            let fits = options.iter().any(|o| {
                let mut e = Vec::new();
                conforms(v, o, path, &mut e);
                e.is_empty()
            });
            if !fits {
                errors.push(format!("{path}: {v} fits none of {options:?}"));
            }
        }
        (shape, v) => errors.push(format!("{path}: {v} is not {shape:?}")),
    }
}

/// An input with everything toolgate can put in one: a chain with a settled, a pending and a
/// dry-run entry, task and agent labels, claims, a repeated query parameter, a body and an
/// approval.
fn rich_input() -> Json {
    let config = Config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/toolgate.yaml"),
    )
    .unwrap();
    let ledger = Ledger::new(&config.chain);
    let task = TaskKey::named("T-1");
    let now = SystemTime::now();
    let issue = [(Arc::from("issue"), json!("SUP-1"))];
    let record = |action: &str, decision: &'static str, dry_run: bool, labels: &[Arc<str>]| {
        ledger.record(
            &task,
            &chain::Action {
                action,
                tool: Some("jira"),
                agent: "spiffe://a",
                decision,
                dry_run,
                attributes: &issue,
                labels,
                at: now,
            },
        )
    };
    let first = record("ticket.read", "allow", false, &[Arc::from("pii")]);
    ledger.settle(&task, first, Outcome::Response(200));
    record("ticket.read", "deny", true, &[]);
    record("ticket.transition", "allow", false, &[]);
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("authorization", HeaderValue::from_static("Bearer hidden"));
    let claims = json!({"sub": "agent", "act": {"sub": "orchestrator"}});
    let body = json!({"transition": {"id": "31"}});
    let params = [
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
        ("b".to_string(), "3".to_string()),
    ];
    let mut value = Input {
        agent_id: "spiffe://a",
        agent_claims: Some(&claims),
        task_id: "T-1",
        task_claims: Some(&claims),
        task_verified: true,
        action: "ticket.transition",
        tool: Some("jira"),
        attributes: &issue,
        request: RequestView {
            method: "POST",
            scheme: "https",
            host: "jira.example.com",
            port: 443,
            path: "/rest/api/3/issue/SUP-1/transitions",
            params: &params,
            headers: &headers,
            hidden: &[],
            body: Some(&body),
        },
        state: ledger.view(&task, "spiffe://a", now),
        now,
    }
    .to_value();
    crate::approval::Granted {
        id: "ap-1".into(),
        approved_by: "alice".into(),
        approved_at: "2026-01-01T00:00:00Z".into(),
        comment: None,
    }
    .annotate(&mut value);
    serde_json::to_value(&value).unwrap()
}

#[test]
fn every_path_of_a_real_input_is_in_the_schema_and_every_required_field_is_in_the_input() {
    let input = rich_input();
    // The input really has what this test is about.
    assert_eq!(input["chain"].as_array().unwrap().len(), 3);
    assert_eq!(input["chain"][0]["status"], 200);
    assert_eq!(input["chain"][1]["dry_run"], true);
    assert_eq!(input["chain"][2]["pending"], true);
    assert!(input["task"]["labels"]["pii"]["by"].is_string());
    assert_eq!(input["request"]["query"]["b"], json!(["2", "3"]));
    assert_eq!(input["approval"]["approved_by"], "alice");
    let mut errors = Vec::new();
    conforms(&input, &super::input(), "input", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}\n{input:#}");
    // And the checker can fail: a field the schema does not know.
    let mut bad = input.clone();
    bad["action"]["nme"] = json!("x");
    bad["chain"][0]["stauts"] = json!(200);
    let mut errors = Vec::new();
    conforms(&bad, &super::input(), "input", &mut errors);
    assert_eq!(
        errors,
        [
            "input.action.nme is not in the schema",
            "input.chain[0].stauts is not in the schema"
        ]
    );
}

#[test]
fn the_json_schema_lists_each_catalogued_action_with_its_attributes() {
    let config = Config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/toolgate.yaml"),
    )
    .unwrap();
    let schema = json_schema(&config.catalog);
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(
        schema["required"],
        json!(["agent", "task", "action", "request", "chain", "now"])
    );
    let options = schema["properties"]["action"]["anyOf"].as_array().unwrap();
    let named = |name: &str| {
        options
            .iter()
            .find(|o| o["properties"]["name"]["enum"] == json!([name]))
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };
    let read = named("ticket.read");
    assert_eq!(read["properties"]["tool"]["enum"], json!(["jira"]));
    assert_eq!(
        read["properties"]["attributes"]["properties"],
        json!({"issue": {"type": "string"}})
    );
    assert_eq!(
        read["properties"]["attributes"]["additionalProperties"],
        false
    );
    assert_eq!(
        named("payment.create")["properties"]["attributes"]["properties"],
        json!({"amount": {"type": "string"}, "currency": {"type": "string"}})
    );
    assert_eq!(
        named("unknown")["properties"]["tool"]["type"],
        json!(["string", "null"])
    );
    let crm = options
        .iter()
        .find(|o| o["properties"]["name"]["pattern"] == "^crm\\.")
        .unwrap();
    assert_eq!(crm["properties"]["attributes"], json!({"type": "object"}));
    let delegate = named("task.delegate");
    assert_eq!(delegate["properties"]["tool"], json!({"type": "null"}));
    assert_eq!(
        delegate["properties"]["attributes"]["properties"]["depth"],
        json!({"type": "integer"})
    );
    // 5 REST actions, the MCP tool, task.delegate, unknown.
    assert_eq!(options.len(), 8);
    let chain = &schema["properties"]["chain"]["items"];
    assert_eq!(chain["properties"]["status"]["type"], "integer");
    assert_eq!(chain["additionalProperties"], false);
    assert_eq!(
        schema["properties"]["request"]["properties"]["headers"]["additionalProperties"],
        json!({"type": "string"})
    );
}
