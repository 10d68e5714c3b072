//! The signing key of minted credentials (`kind: jwt`): parsed once at load into a
//! jsonwebtoken `EncodingKey`, with its public JWK and key id, and checked by signing and
//! verifying a probe token, so a key that cannot sign fails `toolgate check`, not a request.
//!
//! jsonwebtoken's RustCrypto backend turns the `EncodingKey` into an Ed25519 signing key on
//! every `encode`, re-deriving the public key — half the cost of a signature. toolgate
//! installs a `CryptoProvider` that is the RustCrypto one except that Ed25519 signing keys,
//! once parsed, are kept (per thread, by their DER bytes), so a mint only signs.

use std::fmt;

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value as Json;

/// Algorithms minted credentials may be signed with.
pub const SIGNING_ALGORITHMS: [&str; 4] = ["EdDSA", "ES256", "ES384", "RS256"];

/// A private signing key with its public half as a JWK; never printed.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    /// RFC 7638 thumbprint of the public key: a new key gets a new id by itself.
    kid: String,
    /// The public key as published in the JWKS (with `kid`, `alg` and `use`).
    jwk: Json,
    /// The JWT header every token signed with this key carries.
    header: Header,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parse a PEM private key for `algorithm` (PKCS#8; PKCS#1 also for RSA).
    pub fn from_pem(pem: &[u8], algorithm: Algorithm) -> Result<SigningKey, String> {
        install_provider();
        let encoding = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            other => return Err(format!("algorithm {other:?} is not supported for minting")),
        }
        .map_err(|e| format!("not a PEM private key for {algorithm:?}: {e}"))?;
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm)
            .map_err(|e| format!("not a private key for {algorithm:?}: {e}"))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("cannot compute the key id: {e}"))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.clone());
        probe(&encoding, &jwk, &header, algorithm)?;
        let jwk = serde_json::to_value(&jwk).map_err(|e| e.to_string())?;
        Ok(SigningKey {
            algorithm,
            encoding,
            kid,
            jwk,
            header,
        })
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key id (`kid`) tokens carry in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, as the JWKS publishes it.
    pub fn jwk(&self) -> &Json {
        &self.jwk
    }

    /// The header of tokens signed with this key.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The parsed private key.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// Sign and verify one token: the key must round-trip through its own public JWK.
fn probe(key: &EncodingKey, jwk: &Jwk, header: &Header, alg: Algorithm) -> Result<(), String> {
    let claims = serde_json::json!({ "probe": true, "exp": u64::MAX / 2 });
    let token = jsonwebtoken::encode(header, &claims, key)
        .map_err(|e| format!("cannot sign with this key: {e}"))?;
    let public = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(alg);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Json>(&token, &public, &validation)
        .map(drop)
        .map_err(|e| format!("a token signed with this key does not verify: {e}"))
}

/// DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A new Ed25519 private key as PKCS#8 PEM (`toolgate keys init`), from the OS's randomness.
pub fn generate_ed25519_pem() -> Result<String, String> {
    use rand::TryRngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| format!("no randomness from the OS: {e}"))?;
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    seed.fill(0);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    der.fill(0);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

/// Install toolgate's jsonwebtoken `CryptoProvider`, before the first use of jsonwebtoken. If
/// another was installed first (a program using jsonwebtoken before toolgate's config), that
/// one stays: tokens are the same, signing is only slower.
pub fn install_provider() {
    use jsonwebtoken::crypto::{rust_crypto, CryptoProvider};
    static PROVIDER: std::sync::OnceLock<CryptoProvider> = std::sync::OnceLock::new();
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        signer_factory: cached_signer,
        ..rust_crypto::DEFAULT_PROVIDER.clone()
    });
    let _ = provider.install_default();
}

/// Most Ed25519 keys one thread keeps parsed (keys change only on rotation).
const CACHED_KEYS: usize = 8;

thread_local! {
    static ED25519: std::cell::RefCell<Vec<(Vec<u8>, ed25519_dalek::SigningKey)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

struct Ed25519Signer(ed25519_dalek::SigningKey);

impl jsonwebtoken::signature::Signer<Vec<u8>> for Ed25519Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, jsonwebtoken::signature::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

impl jsonwebtoken::crypto::JwtSigner for Ed25519Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

fn cached_signer(
    alg: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn jsonwebtoken::crypto::JwtSigner>> {
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    use jsonwebtoken::AlgorithmFamily;
    if *alg != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.signer_factory)(alg, key);
    }
    let der = key.as_bytes();
    let cached = ED25519.with(|c| {
        c.borrow()
            .iter()
            .find(|(k, _)| k.as_slice() == der)
            .map(|(_, s)| s.clone())
    });
    let signing = match cached {
        Some(s) => s,
        None => {
            let parsed = ed25519_dalek::SigningKey::from_pkcs8_der(der)
                .map_err(|_| jsonwebtoken::errors::ErrorKind::InvalidEddsaKey)?;
            ED25519.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() >= CACHED_KEYS {
                    c.clear();
                }
                c.push((der.to_vec(), parsed.clone()));
            });
            parsed
        }
    };
    Ok(Box::new(Ed25519Signer(signing)))
}

#[cfg(test)]
mod tests;
