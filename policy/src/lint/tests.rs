use std::path::{Path, PathBuf};

use super::*;
use crate::config::{Config, EmbeddedFiles, PolicyMode, StaticEnv};

const CATALOG: &str = r#"
agent: { id: a }
tools:
  - name: jira
    hosts: [jira.test]
    actions:
      - { name: ticket.read, match: { method: GET, path: "/issue/{issue}" }, attributes: { issue: "path:issue" } }
      - name: ticket.close
        match: { method: POST, path: "/issue/{issue}/transitions", body: { "/transition/id": "31" } }
        attributes: { issue: "path:issue", comment: "body:/comment" }
policy: { files: [p.rego] }
"#;

const WITH_MCP: &str = r#"
  - name: crm
    hosts: [crm.test]
    protocol: mcp
"#;

fn config(yaml: &str) -> Config {
    let yaml: &'static str = Box::leak(yaml.to_string().into_boxed_str());
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap()
}

fn with_mcp() -> Config {
    config(&CATALOG.replace(
        "policy:",
        &format!("{}policy:", WITH_MCP.trim_start_matches('\n')),
    ))
}

fn source(text: &str) -> PolicySource {
    PolicySource {
        modules: vec![("policy/p.rego".into(), text.into())],
        data: serde_json::json!({}),
        query: "data.toolgate.decision".into(),
        mode: PolicyMode::Enforce,
    }
}

fn findings(config: &Config, text: &str) -> Vec<String> {
    lint(&source(text), Some(&config.catalog))
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The issue's two typos: one that never matches, one that always holds (fails open).
const TYPOS: &str = r#"package toolgate
import rego.v1

default decision := false

decision := {"allow": true} if {
	input.action.nme == "ticket.read"
}

decision := {"allow": true, "reason": "closing without an issue is fine"} if {
	input.action.name == "ticket.close"
	not input.action.attributes.isue
}
"#;

#[test]
fn the_two_typos_are_reported_with_file_line_and_column() {
    // Columns count characters (a tab is one), as editors jumping to FILE:LINE:COL do.
    for c in [config(CATALOG), with_mcp()] {
        assert_eq!(
            findings(&c, TYPOS),
            [
                r#"policy/p.rego:7:2: input.action.nme: input.action has no field "nme" (it has name, tool, attributes, definition)"#,
                r#"policy/p.rego:12:6: input.action.attributes.isue: input.action.attributes: no attribute "isue": ticket.close extracts comment, issue"#,
            ]
        );
    }
    // The positive control: the same policy spelled right is clean.
    let fixed = TYPOS.replace(".nme", ".name").replace(".isue", ".issue");
    assert_eq!(findings(&with_mcp(), &fixed), Vec::<String>::new());
}

#[test]
fn attributes_are_checked_against_the_actions_a_body_can_concern() {
    let c = config(CATALOG);
    let check = |body: &str| {
        findings(
            &c,
            &format!("package toolgate\nimport rego.v1\nx if {{\n{body}\n}}\n"),
        )
    };
    // Not narrowed: any catalogued action's attribute is fine, others are not.
    assert!(check("input.action.attributes.comment").is_empty());
    assert_eq!(
        check("input.action.attributes.amount"),
        [
            r#"policy/p.rego:4:1: input.action.attributes.amount: input.action.attributes: no catalogued action extracts an attribute "amount" (the catalog's: actions, comment, depth, issue, scopes, to, ttl)"#
        ]
    );
    // Narrowed by name (==, =, in) or by tool.
    assert_eq!(
        check("input.action.name == \"ticket.read\"\ninput.action.attributes.comment").len(),
        1
    );
    assert!(
        check("\"ticket.close\" = input.action.name\ninput.action.attributes.comment").is_empty()
    );
    assert!(check(
        "input.action.name in {\"ticket.read\", \"ticket.close\"}\ninput.action.attributes.comment"
    )
    .is_empty());
    assert_eq!(
        check("input.action.name in [\"ticket.read\"]\ninput.action.attributes.comment").len(),
        1
    );
    assert!(check("input.action.tool == \"jira\"\ninput.action.attributes.issue").is_empty());
    // Indexed by a string, the same; by a variable, nothing can be said.
    assert_eq!(check("input.action.attributes[\"amount\"]").len(), 1);
    assert!(check("some k\ninput.action.attributes[k]").is_empty());
    // With an MCP tool, any attribute may come (its arguments) unless a body narrows.
    let m = with_mcp();
    let check = |body: &str| {
        findings(
            &m,
            &format!("package toolgate\nimport rego.v1\nx if {{\n{body}\n}}\n"),
        )
    };
    assert!(check("input.action.attributes.amount").is_empty());
    assert!(
        check("input.action.name == \"crm.lookup\"\ninput.action.attributes.customer").is_empty()
    );
    assert_eq!(
        check("input.action.name == \"ticket.read\"\ninput.action.attributes.customer").len(),
        1
    );
}

#[test]
fn references_through_bound_variables_are_followed() {
    let c = config(CATALOG);
    let got = findings(
        &c,
        r#"package toolgate
import rego.v1
read if {
	some e in input.chain
	e.action == "ticket.read"
	e.stauts == 200
}
moved if {
	a := input.action
	a.nme == "x"
	e := input.chain[_]
	e.pending == false
	input.chain[0].outcom
	every h in input.request.headers { h != "" }
	[x | some y in input.chain; x := y.sq]
}
"#,
    );
    assert_eq!(
        got,
        [
            r#"policy/p.rego:6:2: e.stauts: input.chain[_] has no field "stauts" (it has seq, action, tool, agent, decision, pending, outcome, status, attributes, at, dry_run)"#,
            r#"policy/p.rego:10:2: a.nme: input.action has no field "nme" (it has name, tool, attributes, definition)"#,
            r#"policy/p.rego:13:2: input.chain[0].outcom: input.chain[0] has no field "outcom" (it has seq, action, tool, agent, decision, pending, outcome, status, attributes, at, dry_run)"#,
            r#"policy/p.rego:15:35: y.sq: input.chain[_] has no field "sq" (it has seq, action, tool, agent, decision, pending, outcome, status, attributes, at, dry_run)"#,
        ]
    );
}

#[test]
fn the_open_parts_of_the_input_take_any_key_and_scalars_hold_nothing() {
    let c = config(CATALOG);
    let check = |body: &str| {
        findings(
            &c,
            &format!("package toolgate\nimport rego.v1\nx if {{\n{body}\n}}\n"),
        )
    };
    for fine in [
        "input.request.headers[\"x-anything\"]",
        "input.request.query.q",
        "input.request.body.deep.inside[0]",
        "input.agent.claims.sub",
        "input.task.claims.act.sub",
        "input.task.labels.pii.by",
        "input.agent.labels[\"customer-data\"].at",
        "input.approval.approved_by",
        "input.chain[_].attributes.issue",
        "input.task.history_complete",
        "input.listing",
        "input.action.definition.changed",
    ] {
        assert!(check(fine).is_empty(), "{fine}: {:?}", check(fine));
    }
    for wrong in [
        "input.request.path.segments",
        "input.now.year",
        "input.chain.action",
        "input.task.labels.pii.when",
        "input.approval.approver",
        "input.actions",
    ] {
        assert_eq!(check(wrong).len(), 1, "{wrong}");
    }
}

#[test]
fn an_action_name_no_action_can_have_is_reported() {
    let m = with_mcp();
    let check = |body: &str| {
        findings(
            &m,
            &format!("package toolgate\nimport rego.v1\nx if {{\n{body}\n}}\n"),
        )
    };
    assert_eq!(
        check("not input.action.name == \"tikcet.read\""),
        [
            r#"policy/p.rego:4:26: "tikcet.read": no catalogued action is named "tikcet.read" (there are crm.…, task.delegate, ticket.close, ticket.read, unknown)"#
        ]
    );
    assert_eq!(
        check("input.action.name in {\"ticket.read\", \"ticket.clsoe\"}").len(),
        1
    );
    for fine in [
        "input.action.name == \"unknown\"",
        "input.action.name == \"crm.delete_customer\"",
        "input.action.name != \"ticket.read\"",
        "startswith(input.action.name, \"crm.mcp.\")",
    ] {
        assert!(check(fine).is_empty(), "{fine}: {:?}", check(fine));
    }
    // Without a catalog, only the input's paths are checked.
    let text = "package toolgate\nimport rego.v1\nx if {\ninput.action.name == \"nope\"\ninput.action.attributes.nope\ninput.action.nme\n}\n";
    let paths: Vec<String> = lint(&source(text), None)
        .unwrap()
        .iter()
        .map(|f| f.reference.clone())
        .collect();
    assert_eq!(paths, ["input.action.nme"]);
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_quickstart_the_golden_config_and_the_helper_library_raise_no_false_alarm() {
    for file in [
        "examples/quickstart/toolgate.yaml",
        "tests/golden/config/toolgate.yaml",
    ] {
        let c = Config::load(&repo(file)).unwrap();
        let found = lint(&c.policy, Some(&c.catalog)).unwrap();
        assert!(found.is_empty(), "{file}: {found:#?}");
        assert!(!c.policy.modules.is_empty());
    }
    let c = Config::load(&repo("examples/quickstart/toolgate.yaml")).unwrap();
    let lib = PolicySource {
        modules: vec![(
            crate::evaluate::LIB_NAME.into(),
            crate::evaluate::LIB.into(),
        )],
        ..c.policy.clone()
    };
    assert!(lint(&lib, Some(&c.catalog)).unwrap().is_empty());
    let tests =
        std::fs::read_to_string(repo("examples/quickstart/tests/policy_test.rego")).unwrap();
    let tests = PolicySource {
        modules: vec![("policy_test.rego".into(), tests)],
        ..c.policy.clone()
    };
    assert!(lint(&tests, Some(&c.catalog)).unwrap().is_empty());
}

/// Every Rego module written inside the end-to-end tests (`r#"package …"#`).
fn test_policies() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![repo("tests")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_some_and(|e| e == "rego") {
                out.push((
                    path.display().to_string(),
                    std::fs::read_to_string(&path).unwrap(),
                ));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, piece) in text.split("r#\"").enumerate().skip(1) {
                let Some((literal, _)) = piece.split_once("\"#") else {
                    continue;
                };
                if literal.trim_start().starts_with("package ") && literal.contains("input.") {
                    out.push((format!("{}#{i}", path.display()), literal.to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn the_test_policies_of_the_end_to_end_tests_raise_no_false_alarm() {
    let mut checked = 0;
    let mut alarms = Vec::new();
    for (name, text) in test_policies() {
        let source = PolicySource {
            modules: vec![(name.clone(), text)],
            ..source("")
        };
        // Some are broken on purpose (reload tests) or templates: those do not parse.
        let Ok(found) = lint(&source, None) else {
            continue;
        };
        checked += 1;
        alarms.extend(found.iter().map(ToString::to_string));
    }
    assert!(checked >= 20, "only {checked} policies found");
    assert!(alarms.is_empty(), "{alarms:#?}");
}

#[test]
fn a_catalog_without_tools_checks_only_the_input_paths() {
    // Everything is `unknown` until tools are catalogued: a policy written for them is not a
    // typo, but a path the input never has still is.
    let empty = config("agent: { id: a }\npolicy: { files: [p.rego] }\n");
    assert!(empty.catalog.tools().is_empty());
    let found = findings(&empty, TYPOS);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("input.action.nme"), "{found:?}");
    let named = "package toolgate\nimport rego.v1\nx if input.action.name == \"ticket.read\"\n";
    assert!(findings(&empty, named).is_empty());
    // The positive control: with the tools catalogued, the same name is checked.
    assert!(findings(&config(CATALOG), named).is_empty());
    assert_eq!(
        findings(
            &config(CATALOG),
            &named.replace("ticket.read", "tikcet.read")
        )
        .len(),
        1
    );
}
