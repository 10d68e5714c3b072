use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigErrors, EmbeddedFiles, StaticEnv};

fn load(limits: &str) -> Result<Config, ConfigErrors> {
    let yaml = format!("agent: {{ id: a }}\npolicy: {{ files: [main.rego] }}\n{limits}");
    // EmbeddedFiles holds 'static bytes; a test's few hundred leaked bytes are fine.
    let yaml: &'static str = yaml.leak();
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        (
            "main.rego",
            b"package toolgate\ndefault decision := false\n",
        ),
    ]);
    Config::load_from(
        Path::new("toolgate.yaml"),
        &files,
        &StaticEnv(Default::default()),
    )
}

fn errors(limits: &str) -> Vec<String> {
    load(limits)
        .err()
        .map(|e| {
            e.errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn defaults_bound_heads_connections_and_buffers() {
    let limits = load("").unwrap().limits;
    assert_eq!(limits.head_timeout, Duration::from_secs(10));
    assert_eq!(limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(limits.max_head_bytes, 65_536);
    assert_eq!(limits.max_connections, 1024);
    assert_eq!(limits.max_buffered_bytes, 32 * 1024 * 1024);
}

#[test]
fn each_limit_can_be_set() {
    let limits = load(
        "limits: { head_timeout: 2s, idle_timeout: 5m, max_head_bytes: 8192, max_connections: 10, max_buffered_bytes: 1048576 }\n",
    )
    .unwrap()
    .limits;
    assert_eq!(limits.head_timeout, Duration::from_secs(2));
    assert_eq!(limits.idle_timeout, Duration::from_secs(300));
    assert_eq!(limits.max_head_bytes, 8192);
    assert_eq!(limits.max_connections, 10);
    assert_eq!(limits.max_buffered_bytes, 1_048_576);
}

#[test]
fn out_of_bounds_limits_are_each_reported_with_their_field() {
    let found = errors(
        "limits: { head_timeout: 0s, idle_timeout: soon, max_head_bytes: 512, max_connections: 0 }\n",
    );
    for field in [
        "limits.head_timeout: must be longer than zero",
        "limits.idle_timeout: \"soon\" is not a duration",
        "limits.max_head_bytes: 512 is outside 1024..=1048575",
        "limits.max_connections: must be at least 1",
    ] {
        assert!(
            found.iter().any(|e| e.starts_with(field)),
            "{field} missing from {found:#?}"
        );
    }
    assert!(errors("limits: { max_head_bytes: 1048576 }\n")
        .iter()
        .any(|e| e.starts_with("limits.max_head_bytes: 1048576 is outside")));
    assert!(errors("limits: { max_head_bytes: 1048575 }\n").is_empty());
}

#[test]
fn the_buffer_budget_must_hold_one_whole_request() {
    let found = errors(
        "limits: { max_head_bytes: 4096, max_body_bytes: 1000, max_buffered_bytes: 5095 }\n",
    );
    assert_eq!(
        found,
        ["limits.max_buffered_bytes: 5095 is less than one request may need: max_head_bytes + max_body_bytes = 5096"]
    );
    assert!(errors(
        "limits: { max_head_bytes: 4096, max_body_bytes: 1000, max_buffered_bytes: 5096 }\n"
    )
    .is_empty());
}

#[test]
fn unknown_limit_keys_are_errors() {
    let found = errors("limits: { max_header_bytes: 4096 }\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].contains("max_header_bytes"), "{found:#?}");
}
