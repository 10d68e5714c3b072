#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::Duration;

use crate::config::{generate_ed25519_pem, Config, ConfigErrors, EmbeddedFiles, StaticEnv};

const STRONG: &str = "3c9e1f7a5b2d8c4e6f0a1b3d5e7f9a2c4e6b8d0f";

fn load(extra: &str) -> Result<Config, ConfigErrors> {
    let yaml =
        format!("agent: {{ id: spiffe://t/agent-a }}\npolicy: {{ files: [p.rego] }}\n{extra}");
    let leak = |s: String| -> &'static [u8] { Box::leak(s.into_boxed_str()).as_bytes() };
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", leak(yaml)),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
        ("keys/d.pem", leak(generate_ed25519_pem().unwrap())),
        ("secrets/strong", STRONG.as_bytes()),
        ("secrets/weak", b"hunter2"),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default())
}

fn errors(extra: &str) -> Vec<String> {
    load(extra)
        .unwrap_err()
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

#[test]
fn delegation_signs_with_its_key_in_the_agents_name_by_default() {
    let c = load("delegation: { key_file: keys/d.pem }").unwrap();
    let d = c.delegation.unwrap();
    assert_eq!(d.issuer, "spiffe://t/agent-a");
    assert_eq!(d.max_ttl, Duration::from_secs(3600));
    assert_eq!(d.key.algorithm(), jsonwebtoken::Algorithm::EdDSA);
    let c = load("delegation: { key_file: keys/d.pem, issuer: https://tg-a.test, max_ttl: 10m }")
        .unwrap();
    let d = c.delegation.unwrap();
    assert_eq!(
        (d.issuer.as_str(), d.max_ttl),
        ("https://tg-a.test", Duration::from_secs(600))
    );
    assert!(
        load("").unwrap().delegation.is_none(),
        "off unless configured"
    );
    assert_eq!(
        load("").unwrap().chain.ended_retention,
        Duration::from_secs(86_400)
    );
}

#[test]
fn bad_delegation_and_introspection_settings_are_all_reported() {
    let all = errors(
        r#"
delegation: { algorithm: HS256, max_ttl: 30d, issuer: "has space" }
introspection:
  clients:
    - { id: "a:b", secret_file: secrets/strong }
    - { id: tool, secret_file: secrets/weak }
    - { id: twice, secret_file: secrets/strong }
    - { id: twice, secret_file: secrets/strong }
    - { id: gone, secret_file: secrets/missing }
chain: { ended_retention: 0s }
tools:
  - { name: own, hosts: ["toolgate.internal:80"] }
credentials:
  sts: { kind: token_exchange, endpoint: "https://sts.test/token", revocation_endpoint: "https://sts.test/revoke?key=1", audience: x }
"#,
    );
    for want in [
        "delegation.max_ttl: must be at most 7d",
        "delegation.issuer: must be a non-empty name without spaces",
        "delegation.algorithm: \"HS256\" must be one of",
        "delegation.key_file: required",
        "introspection.clients[0].id: must be 1 to 128 visible ASCII characters without ':'",
        "introspection.clients[1].secret_file: secrets/weak: the client secret has 7 characters",
        "introspection.clients[3].id: client \"twice\" is listed twice",
        "introspection.clients[4].secret_file: cannot read",
        "chain.ended_retention: must be longer than zero",
        "tools[0].hosts[0]: toolgate.internal is toolgate's own host",
        "credentials.sts.revocation_endpoint: must not hold a query string",
    ] {
        assert!(
            all.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {all:#?}"
        );
    }
}

#[test]
fn introspection_clients_load_with_their_secrets() {
    let c = load("introspection: { clients: [{ id: jira-tool, secret_file: secrets/strong }] }")
        .unwrap();
    assert_eq!(c.introspection.clients.len(), 1);
    assert_eq!(c.introspection.clients[0].id, "jira-tool");
    assert_eq!(c.introspection.clients[0].secret.expose(), STRONG);
}
