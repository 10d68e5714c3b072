use std::path::Path;

use serde_json::json;

use crate::classify::mcp::definition::digest;
use crate::config::{Config, EmbeddedFiles, StaticEnv};

fn load(yaml: &str, lock: &str) -> Result<Config, Vec<String>> {
    let yaml = format!("agent: {{ id: a }}\npolicy: {{ files: [p.rego] }}\ntools:\n{yaml}");
    // EmbeddedFiles holds 'static contents, as the embedded quickstart does.
    let yaml: &'static str = Box::leak(yaml.into_boxed_str());
    let lock: &'static str = Box::leak(lock.to_string().into_boxed_str());
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
        ("crm.lock.yaml", lock.as_bytes()),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).map_err(|e| {
        e.errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    })
}

const CRM: &str = "  - { name: crm, hosts: [crm.test], protocol: mcp, lock: crm.lock.yaml }\n";

fn lock_for(tool: &str, definition: &serde_json::Value, digest: &str) -> String {
    let file =
        json!({"tool": tool, "tools": {"search": {"digest": digest, "definition": definition}}});
    serde_yaml::to_string(&file).unwrap()
}

#[test]
fn a_lock_pins_its_definitions() {
    let def = json!({"name": "search", "description": "Search."});
    let config = load(CRM, &lock_for("crm", &def, &digest(&def).to_string())).unwrap();
    let lock = &config.mcp.locks["crm"];
    assert_eq!(lock.file, "crm.lock.yaml");
    assert_eq!(lock.tools["search"].digest, digest(&def));
}

#[test]
fn a_lock_that_does_not_hold_is_an_error_naming_the_field() {
    let def = json!({"name": "search", "description": "Search."});
    let other = json!({"name": "search", "description": "Search everything."});
    let cases = [
        (
            lock_for("crm", &def, &digest(&other).to_string()),
            "does not match its definition",
        ),
        (
            lock_for("jira", &def, &digest(&def).to_string()),
            "pins the definitions of tool \"jira\"",
        ),
        (
            lock_for("crm", &def, "md5:00"),
            "is not sha256:<64 hex digits>",
        ),
        (
            "tool: crm\ntools: {}\nextra: 1\n".to_string(),
            "unknown field",
        ),
    ];
    for (lock, wanted) in cases {
        let errors = load(CRM, &lock).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("tools[0].lock: ") && e.contains(wanted)),
            "{wanted}: {errors:?}"
        );
    }
    let missing = load(
        "  - { name: crm, hosts: [crm.test], protocol: mcp, lock: gone.yaml }\n",
        "",
    )
    .unwrap_err();
    assert!(
        missing.iter().any(|e| e.contains("toolgate mcp pin")),
        "{missing:?}"
    );
    let http = load(
        "  - { name: api, hosts: [api.test], lock: crm.lock.yaml }\n",
        "",
    )
    .unwrap_err();
    assert!(
        http.iter().any(|e| e.contains("only for protocol: mcp")),
        "{http:?}"
    );
}

#[test]
fn mcp_bounds_are_checked() {
    let errors = load(
        "  - { name: crm, hosts: [crm.test], protocol: mcp }\nmcp: { max_list_bytes: 0, max_definitions: 0 }\n",
        "",
    )
    .unwrap_err();
    assert!(
        errors.iter().any(|e| e.starts_with("mcp.max_list_bytes")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("mcp.max_definitions")),
        "{errors:?}"
    );
    let config = load("  - { name: crm, hosts: [crm.test], protocol: mcp }\n", "").unwrap();
    assert_eq!(config.mcp.max_list_bytes, 1 << 20);
}
