#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::Duration;

use crate::config::{
    generate_ed25519_pem, Config, ConfigErrors, CredentialSpec, EmbeddedFiles, Placement, StaticEnv,
};

const POLICY: &[u8] = b"package toolgate\nimport rego.v1\ndefault decision := false\n";

fn leak(s: String) -> &'static [u8] {
    Box::leak(s.into_boxed_str()).as_bytes()
}

/// Load `credentials` (YAML mapping body) with `extra` files beside the config.
fn load(
    credentials: &str,
    extra: &[(&'static str, &'static [u8])],
) -> Result<Config, ConfigErrors> {
    let yaml = format!(
        "agent: {{ id: spiffe://t/agent }}\npolicy: {{ files: [p.rego] }}\ncredentials:\n{credentials}"
    );
    let mut files = vec![("toolgate.yaml", leak(yaml)), ("p.rego", POLICY)];
    files.extend_from_slice(extra);
    let vars = StaticEnv(
        [("API_KEY", "k3y/with+chars\n")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    );
    Config::load_from(
        Path::new("toolgate.yaml"),
        &EmbeddedFiles::new(&files),
        &vars,
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
fn secret_in_a_query_parameter_is_percent_encoded() {
    let c = load("  k: { kind: secret, env: API_KEY, query: api_key }\n", &[]).unwrap();
    let CredentialSpec::Secret(s) = &c.credentials["k"] else {
        panic!("a secret")
    };
    assert_eq!(s.placement, Placement::Query("api_key".into()));
    assert_eq!(s.value.header_value(), "k3y%2Fwith%2Bchars");
    let needles: Vec<&str> = s.needles.iter().map(|n| n.expose()).collect();
    // Every form it could come back in (see credential::forms), the sent ones among them.
    for form in [
        "k3y/with+chars",
        "k3y%2Fwith%2Bchars",
        "k3y%2fwith%2bchars",
        "k3y\\/with+chars",
    ] {
        assert!(needles.contains(&form), "{form} not in {needles:?}");
    }
    assert_eq!(c.credentials["k"].header(), None);
    assert!(!format!("{c:?}").contains("k3y"), "secret in Debug output");
}

#[test]
fn basic_auth_from_username_and_secret_or_a_pair() {
    let c = load(
        "  a: { kind: secret, env: API_KEY, format: basic, username: svc }\n  b: { kind: secret, file: pair, format: basic }\n",
        &[("pair", b"user:pa ss\n")],
    )
    .unwrap();
    let CredentialSpec::Secret(a) = &c.credentials["a"] else {
        panic!()
    };
    // base64("svc:k3y/with+chars")
    assert_eq!(a.value.header_value(), "Basic c3ZjOmszeS93aXRoK2NoYXJz");
    assert_eq!(a.placement, Placement::Header(http::header::AUTHORIZATION));
    let CredentialSpec::Secret(b) = &c.credentials["b"] else {
        panic!()
    };
    assert_eq!(b.value.header_value(), "Basic dXNlcjpwYSBzcw==");
    assert!(b.needles.iter().any(|n| n.expose() == "dXNlcjpwYSBzcw=="));
}

#[test]
fn secret_options_that_do_not_fit_are_reported() {
    let e = load(
        "  a: { kind: secret, env: API_KEY, format: basic }\n  b: { kind: secret, env: API_KEY, query: q, header: x-key }\n  c: { kind: secret, env: API_KEY, endpoint: http://x, username: u }\n  d: { kind: secret, env: API_KEY, query: \"a b\" }\n",
        &[],
    )
    .unwrap_err();
    let m = messages(&e);
    for want in [
        "credentials.a: format: basic needs `username`",
        "credentials.b: set one of `header` and `query`, not both",
        "credentials.c.endpoint: does not apply to kind secret",
        "credentials.c.username: applies to `format: basic` only",
        "credentials.d.query: \"a b\" must be a parameter name",
    ] {
        assert!(m.contains(want), "missing {want:?} in:\n{m}");
    }
}

#[test]
fn jwt_key_is_parsed_once_with_its_public_jwk() {
    let pem = generate_ed25519_pem().unwrap();
    let c = load(
        "  pay: { kind: jwt, audience: payments.test, key_file: keys/k.pem, max_ttl: 90s, issuer: tg }\n",
        &[("keys/k.pem", leak(pem.clone()))],
    )
    .unwrap();
    let CredentialSpec::Jwt(j) = &c.credentials["pay"] else {
        panic!("a jwt")
    };
    assert_eq!(j.audience, "payments.test");
    assert_eq!(j.issuer, "tg");
    assert_eq!(j.max_ttl, Duration::from_secs(90));
    assert_eq!(
        (j.format.prefix.as_str(), j.format.suffix.as_str()),
        ("Bearer ", "")
    );
    let jwk = j.key.jwk();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["alg"], "EdDSA");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["kid"], j.key.kid());
    assert_eq!(jwk["x"].as_str().unwrap().len(), 43, "32 bytes, base64url");
    assert!(
        jwk.get("d").is_none(),
        "the private part must not be published"
    );
    assert_eq!(j.key.header().kid.as_deref(), Some(j.key.kid()));
    // The key's base64 body never shows up in Debug output.
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!format!("{c:?}").contains(&body));
}

#[test]
fn each_generated_key_is_new() {
    assert_ne!(
        generate_ed25519_pem().unwrap(),
        generate_ed25519_pem().unwrap()
    );
}

#[test]
fn jwt_needs_audience_and_a_usable_key() {
    let e = load(
        "  a: { kind: jwt }\n  b: { kind: jwt, audience: x, key_file: bad.pem }\n  c: { kind: jwt, audience: x, key_file: bad.pem, algorithm: HS256, max_ttl: 0s }\n",
        &[("bad.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")],
    )
    .unwrap_err();
    let m = messages(&e);
    for want in [
        "credentials.a.audience: required",
        "credentials.a.key_file: required",
        "credentials.b.key_file: bad.pem: not a PEM private key for EdDSA",
        "credentials.c.algorithm: \"HS256\" must be one of EdDSA, ES256, ES384, RS256",
        "credentials.c.max_ttl: must be longer than zero",
    ] {
        assert!(m.contains(want), "missing {want:?} in:\n{m}");
    }
}

#[test]
fn token_exchange_needs_the_agents_identity_token() {
    let e = load(
        "  gh: { kind: token_exchange, endpoint: \"ftp://sts\", audience: github, scopes: [\"a b\"] }\n  gl: { kind: token_exchange, endpoint: \"https://u:p@sts/t\", audience: gitlab }\n",
        &[],
    )
    .unwrap_err();
    let m = messages(&e);
    for want in [
        "credentials.gh.endpoint: \"ftp://sts\" must be an http:// or https:// URL",
        "credentials.gh.scopes[0]: \"a b\" is not a scope token",
        "credentials.gh: token_exchange needs `agent.id_file`",
        "credentials.gl.endpoint: must not hold credentials",
    ] {
        assert!(m.contains(want), "missing {want:?} in:\n{m}");
    }
}

/// Load one `token_exchange` credential at `endpoint`, with an identity token to exchange.
fn exchange_at(endpoint: &str) -> Result<Config, ConfigErrors> {
    use base64::Engine as _;
    let b64 = |j: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(j);
    let token = format!(
        "{}.{}.c2ln",
        b64(r#"{"alg":"EdDSA","typ":"JWT"}"#),
        b64(r#"{"sub":"spiffe://t/agent","exp":4102444800}"#)
    );
    let yaml = format!(
        "agent: {{ id_file: svid.jwt }}\npolicy: {{ files: [p.rego] }}\ncredentials:\n  gh: {{ kind: token_exchange, endpoint: \"{endpoint}\", audience: github }}\n"
    );
    let files = vec![
        ("toolgate.yaml", leak(yaml)),
        ("p.rego", POLICY),
        ("svid.jwt", leak(token)),
    ];
    Config::load_from(
        Path::new("toolgate.yaml"),
        &EmbeddedFiles::new(&files),
        &StaticEnv::default(),
    )
}

#[test]
fn an_sts_endpoint_with_a_query_string_is_refused() {
    for endpoint in [
        "https://sts.example.com/token?api_key=s3cr3t",
        "https://sts.example.com/token?",
    ] {
        let m = messages(&exchange_at(endpoint).unwrap_err());
        assert!(
            m.contains("credentials.gh.endpoint: must not hold a query string"),
            "{endpoint}: {m}"
        );
        assert!(!m.contains("s3cr3t"), "the error repeats the query: {m}");
    }
    let m = messages(&exchange_at("https://user:pw@sts.example.com/token").unwrap_err());
    assert!(
        m.contains("credentials.gh.endpoint: must not hold credentials"),
        "{m}"
    );
}

#[test]
fn plain_http_to_a_remote_sts_loads_with_a_warning_and_loopback_without() {
    let remote = exchange_at("http://sts.example.com/token").unwrap();
    let warnings: Vec<String> = remote
        .warnings
        .iter()
        .map(|w| format!("{}: {}", w.path, w.message))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .starts_with("credentials.gh.endpoint: plain http:// to a host other than loopback"),
        "{warnings:?}"
    );
    for quiet in [
        "https://sts.example.com/token",
        "http://127.0.0.1:8080/token",
        "http://localhost/token",
        "http://[::1]:9/token",
    ] {
        let config = exchange_at(quiet).unwrap();
        assert!(config.warnings.is_empty(), "{quiet}: {:?}", config.warnings);
    }
}
