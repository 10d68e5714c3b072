//! JSON Web Key Sets read at load time, and JWT verification against them: the agent's
//! identity token (`agent.jwks_file`) and task tokens (`task_tokens.issuers[].jwks_file`).
//!
//! A token's `alg` only selects among keys whose own algorithm is that one (declared by the
//! key's `alg`, or implied by its type and curve), so a token cannot pick how it is verified.

use std::fmt;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value as Json};

/// Largest JWT accepted for verification, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// One public key that may verify tokens.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The usable verification keys of one JWKS document.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<(&str, Algorithm)> = self
            .keys
            .iter()
            .map(|k| (k.kid.as_deref().unwrap_or("-"), k.algorithm))
            .collect();
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

/// Why a token did not verify. The messages are shown to the agent: they never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("is not a well-formed JWT")]
    Malformed,
    #[error("is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("is signed with key {kid:?} and {alg}, which the issuer's JWKS does not hold")]
    UnknownKey { kid: String, alg: String },
    #[error("has a signature that does not verify against the issuer's keys")]
    Signature,
    #[error("expired at {0}")]
    Expired(String),
    #[error("is not valid before {0}")]
    NotYetValid(String),
    #[error("is from issuer {0:?}, which is not trusted")]
    Issuer(String),
    #[error("is not meant for this audience")]
    Audience,
    #[error("lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("has a malformed claim {0:?}")]
    BadClaim(String),
}

fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(declared) = jwk.common.key_algorithm {
        return declared.to_string().parse().ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        _ => None,
    }
}

fn family_matches(alg: Algorithm, jwk: &Jwk) -> bool {
    use Algorithm as A;
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(_) => alg == A::EdDSA,
        AlgorithmParameters::EllipticCurve(p) => matches!(
            (alg, &p.curve),
            (A::ES256, EllipticCurve::P256) | (A::ES384, EllipticCurve::P384)
        ),
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
        ),
        // Shared secrets (`oct`) have no place in a key *set* others publish.
        _ => false,
    }
}

impl KeySet {
    /// Parse a JWKS document (`{"keys": [...]}`); keys for encryption, symmetric keys and
    /// keys of unsupported types are skipped. At least one usable key is required.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        super::signing::install_provider();
        let doc: Json = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let Some(items) = doc.get("keys").and_then(Json::as_array) else {
            return Err("not a JWKS document: no \"keys\" array".to_string());
        };
        let mut keys = Vec::new();
        for item in items {
            let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Some(algorithm) = algorithm_of(&jwk).filter(|a| family_matches(*a, &jwk)) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            keys.push(VerifyKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(
                "holds no usable signature verification key (EdDSA, ES256, ES384, RS*, PS*)"
                    .to_string(),
            );
        }
        Ok(KeySet { keys })
    }

    /// The algorithms this set can verify.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut out: Vec<Algorithm> = Vec::new();
        for k in &self.keys {
            if !out.contains(&k.algorithm) {
                out.push(k.algorithm);
            }
        }
        out
    }

    /// Verify `token`'s signature with this set and its claims with `validation`; the claims.
    pub fn verify(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<Map<String, Json>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let candidates: Vec<&VerifyKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                // A token without a kid may be verified by any key of its algorithm, and a
                // key without a kid by any token of its algorithm.
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey {
                kid: header.kid.unwrap_or_default(),
                alg: format!("{:?}", header.alg),
            });
        }
        for key in candidates {
            // jsonwebtoken refuses (InvalidAlgorithm) a validation that lists an algorithm of
            // another family than the key, as a set of Ed25519 and P-256 keys does: each key
            // is checked for its own algorithm, which is the token's (`candidates`).
            let mixed = validation
                .algorithms
                .iter()
                .any(|a| a.family() != key.algorithm.family());
            let narrowed;
            let validation = if mixed {
                narrowed = Validation {
                    algorithms: vec![key.algorithm],
                    ..validation.clone()
                };
                &narrowed
            } else {
                validation
            };
            match jsonwebtoken::decode::<Map<String, Json>>(token, &key.key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(claim_error(e.kind(), token)),
            }
        }
        Err(TokenError::Signature)
    }
}

/// Read a token's claims without verifying it (for an `id_file` trusted by where it is mounted).
pub fn unverified_claims(token: &str) -> Result<Map<String, Json>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Json>>(token)
        .map_err(|_| TokenError::Malformed)
}

/// The RFC 3339 time of a numeric date claim.
pub fn claim_time(claims: &Map<String, Json>, name: &str) -> Option<String> {
    let secs = claims.get(name)?.as_u64()?;
    let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))?;
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

fn claim_error(kind: &ErrorKind, token: &str) -> TokenError {
    let claims = unverified_claims(token).unwrap_or_default();
    let time = |name: &str| claim_time(&claims, name).unwrap_or_else(|| "?".to_string());
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired(time("exp")),
        ErrorKind::ImmatureSignature => TokenError::NotYetValid(time("nbf")),
        ErrorKind::InvalidIssuer => TokenError::Issuer(
            claims
                .get("iss")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string(),
        ),
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => TokenError::BadClaim(c.clone()),
        ErrorKind::InvalidSignature => TokenError::Signature,
        _ => TokenError::Malformed,
    }
}
