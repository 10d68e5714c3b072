use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigErrors, EmbeddedFiles, StateBackend, StateSettings, StaticEnv};

const POLICY: &[u8] = b"package toolgate\nimport rego.v1\ndefault decision := false\n";
const TOKEN: &[u8] = b"5f0c3a9e1b7d2468ace0f13579bdf02468ace13579bdf0\n";

fn load(yaml: &'static str, token: &'static [u8]) -> Result<Config, ConfigErrors> {
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("policy/main.rego", POLICY),
        ("operator-token", token),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default())
}

fn messages(e: ConfigErrors) -> Vec<String> {
    e.errors
        .into_iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

const BASE: &str = "agent: { id: a }\npolicy: { files: [policy/*.rego] }\n";

#[test]
fn defaults_leave_the_operator_api_off_and_state_in_memory() {
    let c = load(BASE, TOKEN).unwrap();
    assert!(c.admin.token.is_none());
    assert!(c.listen.operator.is_none());
    assert_eq!(c.admin.revocation_ttl, Duration::from_secs(86_400));
    assert_eq!(c.admin.max_revocation_ttl, Duration::from_secs(30 * 86_400));
    assert_eq!(
        c.state,
        StateSettings {
            backend: StateBackend::Memory,
            dir: None
        }
    );
}

#[test]
fn a_good_token_socket_and_state_dir_are_accepted() {
    const YAML: &str = "agent: { id: a }\npolicy: { files: [policy/*.rego] }\n\
        listen: { operator: \"unix:run/operator.sock\" }\n\
        admin: { token_file: operator-token, revocation_ttl: 1h, max_revocation_ttl: 7d }\n\
        state: { backend: memory, dir: state }\n";
    let c = load(YAML, TOKEN).unwrap();
    // The trailing newline of the file is not part of the token.
    assert_eq!(
        c.admin.token.as_ref().map(|t| t.expose().len()),
        Some(TOKEN.len() - 1)
    );
    assert_eq!(c.admin.max_revocation_ttl, Duration::from_secs(7 * 86_400));
    // Relative paths resolve against the config's directory.
    assert_eq!(
        c.listen.operator.as_deref(),
        Some(Path::new("<embedded>/run/operator.sock"))
    );
    assert_eq!(c.state.dir.as_deref(), Some(Path::new("<embedded>/state")));
}

#[test]
fn guessable_tokens_are_refused_without_echoing_them() {
    for (token, says) in [
        (&b""[..], "is empty"),
        (&b"\n\n"[..], "is empty"),
        (
            &b"0123456789abcdef0123456789abcde"[..],
            "31 characters, fewer than 32",
        ),
        (
            &b"abababababababababababababababababab"[..],
            "only 2 distinct",
        ),
        (&b"0123456789abcdef 0123456789abcdef0"[..], "visible ASCII"),
    ] {
        const YAML: &str =
            "agent: { id: a }\npolicy: { files: [policy/*.rego] }\nadmin: { token_file: operator-token }\n";
        let errors = messages(load(YAML, token).unwrap_err());
        assert_eq!(errors.len(), 1, "{errors:?}");
        let message = errors.first().unwrap();
        assert!(message.starts_with("admin.token_file: "), "{message}");
        assert!(message.contains(says), "{token:?}: {message}");
        let text = std::str::from_utf8(token).unwrap().trim();
        if !text.is_empty() {
            assert!(!message.contains(text), "the token is echoed: {message}");
        }
    }
}

#[test]
fn bad_operator_settings_are_all_reported_with_their_fields() {
    const YAML: &str = "agent: { id: a }\npolicy: { files: [policy/*.rego] }\n\
        listen: { operator: \"127.0.0.1:15002\" }\n\
        admin: { token_file: missing-token, revocation_ttl: 40d, max_revocation_ttl: 100000d }\n\
        state: { backend: redis }\n";
    let errors = messages(load(YAML, TOKEN).unwrap_err());
    let want = [
        "listen.operator: \"127.0.0.1:15002\" must be unix:/path/to/operator.sock",
        "admin.token_file: cannot read <embedded>/missing-token",
        "admin.max_revocation_ttl: must be at most 3650d",
        "state.url: backend redis needs url",
    ];
    for w in want {
        assert!(errors.iter().any(|e| e.starts_with(w)), "{w}: {errors:?}");
    }
    assert_eq!(errors.len(), want.len(), "{errors:?}");

    const LONGER_DEFAULT: &str = "agent: { id: a }\npolicy: { files: [policy/*.rego] }\n\
        admin: { revocation_ttl: 40d }\nstate: { backend: etcd, dir: \"\" }\n";
    let errors = messages(load(LONGER_DEFAULT, TOKEN).unwrap_err());
    assert_eq!(
        errors,
        [
            "admin.revocation_ttl: 40d is longer than admin.max_revocation_ttl (30d)",
            "state.backend: \"etcd\" is not a state backend; use `memory` or `redis`",
            "state.dir: must name a directory (or leave it out to keep state in memory only)",
        ]
    );
}

#[test]
fn socket_paths_longer_than_linux_allows_are_refused() {
    let long = format!(
        "agent: {{ id: a }}\npolicy: {{ files: [policy/*.rego] }}\nlisten: {{ operator: \"unix:/{}\" }}\n",
        "s".repeat(120)
    );
    let long: &'static str = Box::leak(long.into_boxed_str());
    let errors = messages(load(long, TOKEN).unwrap_err());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors.first().unwrap().contains("at most 107"),
        "{errors:?}"
    );
}
