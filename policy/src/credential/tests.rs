#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{actions, lifetime, preview, scope, select, Claims, Subject, UnknownCredential};
use crate::config::{generate_ed25519_pem, Config, CredentialSpec, EmbeddedFiles, SigningKey};
use crate::config::{JwtSpec, StaticEnv};
use crate::evaluate::CredentialGrant;
use crate::prepare::prepare;

const POLICY: &[u8] = b"package toolgate\nimport rego.v1\ndefault decision := false\n";
const SECRET: &str = "s3cret-value-never-shown";

fn leak(s: String) -> &'static [u8] {
    Box::leak(s.into_boxed_str()).as_bytes()
}

/// The agent's identity token (signed by a throwaway issuer, trusted as mounted), carrying a
/// delegation chain.
fn agent_token() -> &'static [u8] {
    let issuer = SigningKey::from_pem(
        generate_ed25519_pem().unwrap().as_bytes(),
        jsonwebtoken::Algorithm::EdDSA,
    )
    .unwrap();
    let claims = json!({ "sub": "spiffe://t/agent", "exp": 4_102_444_800u64,
        "act": { "sub": "user:alice" } });
    leak(jsonwebtoken::encode(issuer.header(), &claims, issuer.encoding_key()).unwrap())
}

/// One credential of each kind; tool `jira` defaults to the secret, `crm` is MCP.
fn config() -> Config {
    let yaml = r#"
agent: { id_file: agent.jwt }
tools:
  - { name: jira, hosts: [jira.test], credential: jira-token }
  - { name: crm, hosts: [crm.test], protocol: mcp, credential: crm-jwt }
  - { name: bare, hosts: [bare.test] }
policy: { files: [p.rego] }
credentials:
  jira-token: { kind: secret, file: jira, header: X-Api-Token }
  maps-key: { kind: secret, file: jira, query: key }
  crm-jwt: { kind: jwt, audience: crm.test, key_file: k.pem, issuer: tg, max_ttl: 60s }
  github: { kind: token_exchange, endpoint: "https://sts.test/token", audience: github, scopes: [read, write] }
"#;
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("p.rego", POLICY),
        ("jira", SECRET.as_bytes()),
        ("k.pem", leak(generate_ed25519_pem().unwrap())),
        ("agent.jwt", agent_token()),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap()
}

fn tool<'c>(c: &'c Config, name: &str) -> Option<&'c crate::classify::Tool> {
    (0..3)
        .filter_map(|i| c.catalog.tool(i))
        .find(|t| &*t.name == name)
}

fn grant(name: Option<&str>, scopes: &[&str], ttl: Option<u64>) -> CredentialGrant {
    CredentialGrant {
        name: name.map(str::to_string),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl: ttl.map(Duration::from_secs),
    }
}

fn jwt(c: &Config) -> &JwtSpec {
    match &c.credentials["crm-jwt"] {
        CredentialSpec::Jwt(j) => j,
        other => panic!("{other:?}"),
    }
}

const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

#[test]
fn the_decisions_credential_wins_over_the_tools_default() {
    let c = config();
    let jira = tool(&c, "jira");
    let default = select(&c, jira, &grant(None, &[], None)).unwrap().unwrap();
    assert_eq!(default.name, "jira-token");
    let named = select(&c, jira, &grant(Some("github"), &[], None))
        .unwrap()
        .unwrap();
    assert_eq!(named.name, "github");
    assert!(select(&c, tool(&c, "bare"), &grant(None, &[], None))
        .unwrap()
        .is_none());
    assert_eq!(
        select(&c, jira, &grant(Some("nope"), &[], None)).unwrap_err(),
        UnknownCredential::NotConfigured("nope".into())
    );
}

#[test]
fn a_destination_no_tool_serves_gets_no_credential_even_when_policy_names_one() {
    let c = config();
    // Whatever scheme the agent used: no catalogued upstream vouches for it.
    assert_eq!(
        select(&c, None, &grant(Some("github"), &[], None)).unwrap_err(),
        UnknownCredential::NoTool("github".into())
    );
    assert!(select(&c, None, &grant(None, &[], None)).unwrap().is_none());
    // Positive control: the same credential for a catalogued tool is selected.
    let named = select(&c, tool(&c, "jira"), &grant(Some("github"), &[], None));
    assert_eq!(named.unwrap().unwrap().name, "github");
}

#[test]
fn a_secret_preview_names_its_placement_never_its_value() {
    let c = config();
    let subject = Subject::new(&c, "T-1", "ticket.read", None);
    let g = grant(None, &[], None);
    let header = select(&c, tool(&c, "jira"), &g).unwrap().unwrap();
    assert_eq!(
        preview(&header, &g, &subject, now()),
        json!({ "name": "jira-token", "kind": "secret", "header": "x-api-token" })
    );
    let query = select(&c, tool(&c, "bare"), &grant(Some("maps-key"), &[], None))
        .unwrap()
        .unwrap();
    let shown = preview(&query, &g, &subject, now());
    assert_eq!(
        shown,
        json!({ "name": "maps-key", "kind": "secret", "query": "key" })
    );
    assert!(!shown.to_string().contains(SECRET));
}

#[test]
fn a_jwt_preview_shows_the_claims_the_minter_would_sign() {
    let c = config();
    let g = grant(None, &["crm:read", "crm.lookup"], Some(30));
    let task_claims = json!({ "act": { "sub": "orchestrator" } });
    let subject = Subject::new(&c, "T-7", "crm.lookup", Some(&task_claims));
    let selected = select(&c, tool(&c, "crm"), &g).unwrap().unwrap();
    let shown = preview(&selected, &g, &subject, now());
    let spec = jwt(&c);
    assert_eq!(
        shown,
        json!({
            "name": "crm-jwt", "kind": "jwt", "header": "authorization",
            "jwt_header": { "alg": "EdDSA", "kid": spec.key.kid() },
            "lifetime_seconds": 30,
            "claims": {
                "iss": "tg", "sub": "spiffe://t/agent", "aud": "crm.test",
                "iat": NOW, "nbf": NOW, "exp": NOW + 30, "jti": null,
                "scope": "crm.lookup crm:read", "task": "T-7",
                "act": { "sub": "orchestrator" },
            },
        })
    );
    // The same claims a minted token carries, but for its own jti.
    let minted = serde_json::to_value(Claims::new(spec, &g, &subject, now(), Some("j-1"))).unwrap();
    assert_eq!(minted["jti"], "j-1");
    assert_eq!(minted["scope"], shown["claims"]["scope"]);
    assert_eq!(minted["exp"], shown["claims"]["exp"]);
}

#[test]
fn without_a_task_token_the_delegation_chain_comes_from_the_agents_token() {
    let c = config();
    let subject = Subject::new(&c, "T-1", "crm.lookup", None);
    assert_eq!(subject.act, Some(&json!({ "sub": "user:alice" })));
    let not_an_object = json!({ "act": "user:bob" });
    let subject = Subject::new(&c, "T-1", "crm.lookup", Some(&not_an_object));
    assert_eq!(subject.act, Some(&json!({ "sub": "user:alice" })));
}

#[test]
fn a_token_exchange_preview_shows_the_audience_and_scopes_it_would_request() {
    let c = config();
    let g = grant(Some("github"), &["write", "admin"], None);
    let subject = Subject::new(&c, "T-1", "repo.read", None);
    let selected = select(&c, tool(&c, "bare"), &g).unwrap().unwrap();
    assert_eq!(
        preview(&selected, &g, &subject, now()),
        json!({
            "name": "github", "kind": "token_exchange", "header": "authorization",
            "endpoint": "https://sts.test/token", "audience": "github",
            "scope": "read write admin",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "requested_token_type": null,
        })
    );
}

#[test]
fn policy_ttl_is_capped_at_max_ttl_and_defaults_to_it() {
    let c = config();
    let spec = jwt(&c);
    assert_eq!(
        lifetime(spec, &grant(None, &[], Some(3600))),
        Duration::from_secs(60)
    );
    assert_eq!(
        lifetime(spec, &grant(None, &[], None)),
        Duration::from_secs(60)
    );
    let tiny = CredentialGrant {
        ttl: Some(Duration::from_millis(10)),
        ..CredentialGrant::default()
    };
    assert_eq!(lifetime(spec, &tiny), Duration::from_secs(1));
}

#[test]
fn scopes_are_deduplicated_after_the_action() {
    assert_eq!(scope("a.b", &[]), "a.b");
    assert_eq!(
        scope("a.b", &["x".into(), "a.b".into(), "x".into(), "y".into()]),
        "a.b x y"
    );
}

#[test]
fn a_batch_is_scoped_to_each_of_its_actions_once() {
    let c = config();
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let call = |id: u64, name: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name}});
    let batch = json!([call(1, "lookup"), call(2, "orders"), call(3, "lookup")]).to_string();
    let prepared = prepare(
        &c,
        "POST",
        b"http://crm.test/mcp",
        &headers,
        Some(batch.as_bytes()),
    )
    .unwrap();
    assert_eq!(actions(&prepared), "crm.lookup crm.orders");
    let one = call(1, "lookup").to_string();
    let prepared = prepare(
        &c,
        "POST",
        b"http://crm.test/mcp",
        &headers,
        Some(one.as_bytes()),
    )
    .unwrap();
    assert_eq!(actions(&prepared), "crm.lookup");
}
