#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use http::HeaderValue;
use pingora::http::ResponseHeader;
use serde_json::{json, Value as Json};
use toolgate_policy::config::{
    generate_ed25519_pem, Config, CredentialSpec, EmbeddedFiles, JwtSpec, SecretText, StaticEnv,
};
use toolgate_policy::evaluate::CredentialGrant;

use super::keys::KeyRing;
use super::mint::{self, Subject};
use super::{redact, scrub, with_query_param, Injection, Target};

fn leak(s: String) -> &'static [u8] {
    Box::leak(s.into_boxed_str()).as_bytes()
}

/// A config with jwt credentials `a` (max_ttl 60s) and `b` (max_ttl 5m) on `keys`.
fn config(key_a: &'static [u8], key_b: &'static [u8]) -> Config {
    let yaml = "agent: { id: spiffe://t/agent }\npolicy: { files: [p.rego] }\ncredentials:\n  a: { kind: jwt, audience: tool-a, key_file: a.pem }\n  b: { kind: jwt, audience: tool-b, key_file: b.pem, max_ttl: 5m }\n";
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
        ("a.pem", key_a),
        ("b.pem", key_b),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap()
}

fn jwt(config: &Config, name: &str) -> JwtSpec {
    match &config.credentials[name] {
        CredentialSpec::Jwt(j) => j.clone(),
        other => panic!("{other:?}"),
    }
}

fn pem() -> &'static [u8] {
    leak(generate_ed25519_pem().unwrap())
}

#[test]
fn minted_tokens_carry_the_action_task_and_policy_ttl() {
    let c = config(pem(), pem());
    let spec = jwt(&c, "a");
    let grant = CredentialGrant {
        name: None,
        scopes: vec![
            "payments:write".into(),
            "payment.create".into(),
            "payments:write".into(),
        ],
        ttl: Some(Duration::from_secs(30)),
    };
    let act = json!({ "sub": "user:alice" });
    let subject = Subject {
        agent: "spiffe://t/agent",
        task: "T-7",
        action: "payment.create",
        act: Some(&act),
        approval: None,
        not_after: None,
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let minted = mint::mint(&spec, &grant, &subject, now).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(
        &serde_json::from_value(spec.key.jwk().clone()).unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.validate_exp = false;
    v.set_audience(&["tool-a"]);
    let data = jsonwebtoken::decode::<Json>(&minted.token, &key, &v).unwrap();
    assert_eq!(data.header.kid.as_deref(), Some(spec.key.kid()));
    let claims = data.claims;
    assert_eq!(claims["iss"], "toolgate");
    assert_eq!(claims["sub"], "spiffe://t/agent");
    assert_eq!(claims["aud"], "tool-a");
    assert_eq!(claims["iat"], 1_800_000_000u64);
    assert_eq!(claims["nbf"], 1_800_000_000u64);
    assert_eq!(claims["exp"], 1_800_000_030u64);
    assert_eq!(claims["scope"], "payment.create payments:write");
    assert_eq!(claims["task"], "T-7");
    assert_eq!(claims["act"], act);
    assert_eq!(claims["jti"], minted.jti);
    let again = mint::mint(&spec, &grant, &subject, now).unwrap();
    assert_ne!(again.jti, minted.jti, "jti must be unique per token");
}

#[test]
fn rotated_out_keys_stay_published_for_max_ttl() {
    let (a1, b1, a2) = (pem(), pem(), pem());
    let first = config(a1, b1);
    let rotated = config(a2, b1);
    let kid = |c: &Config, n: &str| jwt(c, n).key.kid().to_string();
    let kids = |doc: Json| -> Vec<String> {
        doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let ring = KeyRing::default();
    let t0 = Instant::now();
    ring.publish_at(&first, t0);
    assert_eq!(kids(ring.jwks_at(t0)), [kid(&first, "a"), kid(&first, "b")]);
    ring.publish_at(&rotated, t0 + Duration::from_secs(10));
    // The new key first, the old one still there for a's max_ttl (60s).
    let during = kids(ring.jwks_at(t0 + Duration::from_secs(69)));
    assert_eq!(
        during,
        [kid(&rotated, "a"), kid(&rotated, "b"), kid(&first, "a")]
    );
    let after = kids(ring.jwks_at(t0 + Duration::from_secs(71)));
    assert_eq!(after, [kid(&rotated, "a"), kid(&rotated, "b")]);
    // Publishing the same configuration again retires nothing.
    ring.publish_at(&rotated, t0 + Duration::from_secs(72));
    assert_eq!(kids(ring.jwks_at(t0 + Duration::from_secs(500))).len(), 2);
}

#[test]
fn query_parameter_injection_replaces_the_agents_own() {
    assert_eq!(with_query_param(b"/v1/x", "key", b"s"), b"/v1/x?key=s");
    assert_eq!(
        with_query_param(b"/v1/x?a=1&key=agent&keyx=2&key", "key", b"s%2F"),
        b"/v1/x?a=1&keyx=2&key=s%2F"
    );
}

fn injection(needles: &[&str]) -> Injection {
    Injection {
        name: "c".into(),
        kind: "jwt",
        id: None,
        target: Target::Header(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        ),
        needles: needles.iter().map(|n| SecretText::new(n)).collect(),
    }
}

#[test]
fn echoed_credentials_are_scrubbed_from_response_headers() {
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.append_header("x-echo", "Bearer tok.en-1").unwrap();
    resp.append_header("set-cookie", "a=1").unwrap();
    resp.append_header("set-cookie", "b=tok.en-1; c=c2VjcmV0")
        .unwrap();
    resp.append_header("content-type", "application/json")
        .unwrap();
    let scrubbed = scrub(&mut resp, Some(&injection(&["tok.en-1", "c2VjcmV0"])));
    assert_eq!(resp.headers["x-echo"], "Bearer [redacted]");
    // A cookie set in answer to a credentialed request is the session of toolgate's
    // credential, not the agent's: every Set-Cookie is dropped.
    assert_eq!(scrubbed.cookies, 2);
    assert!(resp.headers.get("set-cookie").is_none());
    assert_eq!(resp.headers["content-type"], "application/json");
    assert_eq!(
        redact(b"xxtokxxtok", &[b"tok"]),
        b"xx[redacted]xx[redacted]"
    );
}

#[test]
fn injections_never_print_their_value() {
    let i = injection(&["tok"]);
    assert!(!format!("{i:?}").contains("tok"));
}
