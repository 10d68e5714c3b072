#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::config::{
    generate_ed25519_pem, Config, ConfigErrors, EmbeddedFiles, SigningKey, StaticEnv, TokenError,
};

const POLICY: &[u8] = b"package toolgate\nimport rego.v1\ndefault decision := false\n";

fn leak(s: String) -> &'static [u8] {
    Box::leak(s.into_boxed_str()).as_bytes()
}

fn key() -> SigningKey {
    SigningKey::from_pem(
        generate_ed25519_pem().unwrap().as_bytes(),
        jsonwebtoken::Algorithm::EdDSA,
    )
    .unwrap()
}

fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>() }).to_string()
}

fn sign(key: &SigningKey, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(key.header(), &claims, key.encoding_key()).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn load(agent: &str, extra: Vec<(&'static str, &'static [u8])>) -> Result<Config, ConfigErrors> {
    let yaml = format!("agent: {agent}\npolicy: {{ files: [p.rego] }}\n");
    let mut files = vec![("toolgate.yaml", leak(yaml)), ("p.rego", POLICY)];
    files.extend(extra);
    Config::load_from(
        Path::new("toolgate.yaml"),
        &EmbeddedFiles::new(&files),
        &StaticEnv::default(),
    )
}

fn messages(e: &ConfigErrors) -> String {
    e.errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn agent_id_is_the_verified_tokens_sub_and_its_claims_are_kept() {
    let k = key();
    let token = sign(
        &k,
        json!({ "sub": "spiffe://t/ns/a/sa/agent", "aud": ["sts"], "exp": now() + 600 }),
    );
    let c = load(
        "{ id_file: svid, jwks_file: bundle.json }",
        vec![
            ("svid", leak(format!("{token}\n"))),
            ("bundle.json", leak(jwks(&[&k]))),
        ],
    )
    .unwrap();
    assert_eq!(c.agent.id, "spiffe://t/ns/a/sa/agent");
    assert_eq!(c.agent.claims.as_ref().unwrap()["aud"], json!(["sts"]));
    assert_eq!(c.agent.token.as_ref().unwrap().expose(), token);
    assert!(c.agent.expires.is_some());
    assert!(
        !format!("{c:?}").contains(&token),
        "the token leaked into Debug output"
    );
}

#[test]
fn an_explicit_agent_id_wins_over_the_tokens_sub() {
    let k = key();
    let token = sign(
        &k,
        json!({ "sub": "system:serviceaccount:ns:sa", "exp": now() + 600 }),
    );
    let c = load(
        "{ id: spiffe://explicit, id_file: t }",
        vec![("t", leak(token))],
    )
    .unwrap();
    assert_eq!(c.agent.id, "spiffe://explicit");
    assert_eq!(
        c.agent.claims.as_ref().unwrap()["sub"],
        "system:serviceaccount:ns:sa"
    );
}

#[test]
fn identity_tokens_that_do_not_verify_or_expired_fail_closed() {
    let (k, other) = (key(), key());
    let forged = sign(&other, json!({ "sub": "x", "exp": now() + 600 }));
    let expired = sign(&k, json!({ "sub": "x", "exp": now() - 3600 }));
    let bundle = leak(jwks(&[&k]));
    let e = load(
        "{ id_file: t, jwks_file: b }",
        vec![("t", leak(forged)), ("b", bundle)],
    )
    .unwrap_err();
    assert!(
        messages(&e).contains("agent.id_file: the identity token is signed with key"),
        "{}",
        messages(&e)
    );
    let e = load(
        "{ id_file: t, jwks_file: b }",
        vec![("t", leak(expired.clone())), ("b", bundle)],
    )
    .unwrap_err();
    assert!(
        messages(&e).contains("agent.id_file: the identity token expired at"),
        "{}",
        messages(&e)
    );
    // Unverified (no jwks_file): an expired token is still refused.
    let e = load("{ id_file: t }", vec![("t", leak(expired))]).unwrap_err();
    assert!(
        messages(&e).contains("agent.id_file: the identity token expired at"),
        "{}",
        messages(&e)
    );
    let e = load("{ id_file: t }", vec![("t", b"not a jwt")]).unwrap_err();
    assert!(
        messages(&e).contains("is not a well-formed JWT"),
        "{}",
        messages(&e)
    );
    let e = load("{ jwks_file: b }", vec![("b", bundle)]).unwrap_err();
    assert!(
        messages(&e).contains("agent.jwks_file: verifies the `id_file` token"),
        "{}",
        messages(&e)
    );
}

#[test]
fn a_signature_by_the_right_kid_but_another_key_is_refused() {
    let k = key();
    let other = key();
    // Claim to be `k` in the header, sign with `other`.
    let mut header = other.header().clone();
    header.kid = Some(k.kid().to_string());
    let token = jsonwebtoken::encode(
        &header,
        &json!({ "sub": "x", "exp": now() + 60 }),
        other.encoding_key(),
    )
    .unwrap();
    let keys = crate::config::KeySet::parse(jwks(&[&k]).as_bytes()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.validate_aud = false;
    assert_eq!(keys.verify(&token, &v), Err(TokenError::Signature));
}

#[test]
fn task_token_issuers_are_compiled() {
    let k = key();
    let yaml = "agent: { id: a }\npolicy: { files: [p.rego] }\ntask_tokens:\n  leeway: 5s\n  task_claim: task_id\n  issuers:\n    - { issuer: https://orchestrator, jwks_file: o.json, audience: toolgate }\n    - { issuer: https://orchestrator, jwks_file: missing.json }\n";
    let files = vec![
        ("toolgate.yaml", leak(yaml.to_string())),
        ("p.rego", POLICY),
        ("o.json", leak(jwks(&[&k]))),
    ];
    let e = Config::load_from(
        Path::new("toolgate.yaml"),
        &EmbeddedFiles::new(&files),
        &StaticEnv::default(),
    )
    .unwrap_err();
    let m = messages(&e);
    assert!(
        m.contains(
            "task_tokens.issuers[1].issuer: issuer \"https://orchestrator\" is listed twice"
        ),
        "{m}"
    );
    assert!(
        m.contains("task_tokens.issuers[1].jwks_file: cannot read"),
        "{m}"
    );
    let yaml = "agent: { id: a }\npolicy: { files: [p.rego] }\ntask_tokens:\n  leeway: 5s\n  task_claim: task_id\n  issuers:\n    - { issuer: https://orchestrator, jwks_file: o.json, audience: toolgate }\n";
    let files = vec![
        ("toolgate.yaml", leak(yaml.to_string())),
        ("p.rego", POLICY),
        ("o.json", leak(jwks(&[&k]))),
    ];
    let c = Config::load_from(
        Path::new("toolgate.yaml"),
        &EmbeddedFiles::new(&files),
        &StaticEnv::default(),
    )
    .unwrap();
    let t = c.task_tokens.unwrap();
    assert_eq!(t.task_claim, "task_id");
    assert_eq!(t.issuers[0].validation.leeway, 5);
    assert!(t.issuers[0].validation.required_spec_claims.contains("aud"));
}

/// A P-256 key (the one `signing/tests.rs` uses), beside Ed25519 keys in one JWKS.
const P256_PEM: &[u8] = b"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgevZzL1gdAFr88hb2
OF/2NxApJCzGCEDdfSp6VQO30hyhRANCAAQRWz+jn65BtOMvdyHKcvjBeBSDZH2r
1RTwjmYSi9R/zpBnuQ4EiMnCqfMPWiZqB4QdbAd0E7oH50VpuZ1P087G
-----END PRIVATE KEY-----
";

#[test]
fn a_jwks_with_keys_of_two_families_verifies_tokens_of_either() {
    // Found by the config_load fuzz target's fixtures: jsonwebtoken refuses a Validation that
    // lists an algorithm of another family than the key (InvalidAlgorithm), so a JWKS mid
    // rotation (Ed25519 and P-256 keys) verified no token at all.
    let ed = key();
    let ec = SigningKey::from_pem(P256_PEM, jsonwebtoken::Algorithm::ES256).unwrap();
    let bundle = leak(jwks(&[&ed, &ec]));
    for (k, sub) in [(&ed, "spiffe://t/ed"), (&ec, "spiffe://t/ec")] {
        let token = sign(k, json!({ "sub": sub, "exp": now() + 600 }));
        let c = load(
            "{ id_file: t, jwks_file: b }",
            vec![("t", leak(token)), ("b", bundle)],
        )
        .unwrap_or_else(|e| panic!("{sub}: {}", messages(&e)));
        assert_eq!(c.agent.id, sub);
    }
    // Still only the set's keys: a token by another Ed25519 key is refused.
    let forged = sign(&key(), json!({ "sub": "x", "exp": now() + 600 }));
    let e = load(
        "{ id_file: t, jwks_file: b }",
        vec![("t", leak(forged)), ("b", bundle)],
    )
    .unwrap_err();
    assert!(
        messages(&e).contains("agent.id_file: the identity token is signed with key"),
        "{}",
        messages(&e)
    );
}
