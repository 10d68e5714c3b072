//! Reading a CA private key in the PEM forms operators have: PKCS#8 (`toolgate ca init`,
//! openssl genpkey), SEC1 `EC PRIVATE KEY` (Helm's `genPrivateKey "ecdsa"`, openssl ecparam)
//! and PKCS#1 `RSA PRIVATE KEY`. rcgen with ring signs only with PKCS#8 keys, so the other two
//! are wrapped into PKCS#8 (RFC 5208) — a fixed DER prefix around the original key.

use rcgen::KeyPair;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// `AlgorithmIdentifier`s: id-ecPublicKey with P-256, with P-384, and rsaEncryption.
pub(super) const EC_P256: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
const EC_P384: &[u8] = &[
    0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
    0x00, 0x22,
];
const RSA: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// Parse the first private key in `pem` into a signing key pair.
pub fn parse(pem: &[u8]) -> Result<KeyPair, String> {
    let der = rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| format!("not a PEM private key: {e}"))?
        .ok_or("holds no PEM private key")?;
    let candidates: Vec<Vec<u8>> = match &der {
        PrivateKeyDer::Pkcs8(k) => vec![k.secret_pkcs8_der().to_vec()],
        PrivateKeyDer::Sec1(k) => [EC_P256, EC_P384]
            .iter()
            .map(|alg| pkcs8(alg, k.secret_sec1_der()))
            .collect(),
        PrivateKeyDer::Pkcs1(k) => vec![pkcs8(RSA, k.secret_pkcs1_der())],
        _ => return Err("unsupported private key format".to_string()),
    };
    candidates
        .into_iter()
        .find_map(|der| KeyPair::try_from(&PrivatePkcs8KeyDer::from(der)).ok())
        .ok_or_else(|| "unsupported key type: use ECDSA P-256/P-384, Ed25519 or RSA".to_string())
}

/// `PrivateKeyInfo ::= SEQUENCE { version 0, algorithm, privateKey OCTET STRING }`.
fn pkcs8(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(algorithm);
    body.push(0x04);
    body.extend(length(key.len()));
    body.extend_from_slice(key);
    let mut out = vec![0x30];
    out.extend(length(body.len()));
    out.extend(body);
    out
}

/// A DER length: short form below 128, else the long form with the fewest bytes.
fn length(n: usize) -> Vec<u8> {
    if n < 0x80 {
        return vec![n as u8];
    }
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}
