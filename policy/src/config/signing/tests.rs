#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value as Json};

use super::{generate_ed25519_pem, SigningKey, ED25519};

#[test]
fn ed25519_keys_are_parsed_once_per_thread_and_sign_verifiable_tokens() {
    let key =
        SigningKey::from_pem(generate_ed25519_pem().unwrap().as_bytes(), Algorithm::EdDSA).unwrap();
    let der = key.encoding_key().as_bytes().to_vec();
    let cached = || ED25519.with(|c| c.borrow().iter().filter(|(k, _)| *k == der).count());
    let claims = json!({ "sub": "a", "exp": 4_000_000_000u64 });
    let first = jsonwebtoken::encode(key.header(), &claims, key.encoding_key()).unwrap();
    assert_eq!(cached(), 1, "the provider keeps the parsed key");
    let second = jsonwebtoken::encode(key.header(), &claims, key.encoding_key()).unwrap();
    assert_eq!(cached(), 1, "and reuses it");
    // Ed25519 signatures are deterministic: the cached key signs exactly as a fresh one.
    assert_eq!(first, second);
    let public =
        DecodingKey::from_jwk(&serde_json::from_value(key.jwk().clone()).unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.validate_aud = false;
    assert_eq!(
        jsonwebtoken::decode::<Json>(&first, &public, &v)
            .unwrap()
            .claims,
        claims
    );
}

#[test]
fn es256_keys_sign_through_the_default_backend() {
    // A P-256 PKCS#8 key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256).
    let pem = b"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgevZzL1gdAFr88hb2
OF/2NxApJCzGCEDdfSp6VQO30hyhRANCAAQRWz+jn65BtOMvdyHKcvjBeBSDZH2r
1RTwjmYSi9R/zpBnuQ4EiMnCqfMPWiZqB4QdbAd0E7oH50VpuZ1P087G
-----END PRIVATE KEY-----
";
    let key = SigningKey::from_pem(pem, Algorithm::ES256).unwrap();
    assert_eq!(key.jwk()["crv"], "P-256");
    assert_eq!(key.jwk()["alg"], "ES256");
    assert!(
        SigningKey::from_pem(pem, Algorithm::EdDSA).is_err(),
        "an EC key is no Ed25519 key"
    );
}
