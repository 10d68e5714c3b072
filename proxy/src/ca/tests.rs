use super::*;
use rustls::client::danger::ServerCertVerifier;

fn authority(capacity: usize) -> Authority {
    let (cert, key) = generate("test CA", 1).unwrap();
    Authority::from_pem(cert.as_bytes(), key.as_bytes(), capacity).unwrap()
}

fn sans(leaf: &CertifiedKey) -> Vec<String> {
    let der = leaf.cert.first().unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect()
}

#[test]
fn mints_a_dns_san_for_names_and_an_ip_san_for_addresses() {
    let ca = authority(8);
    assert_eq!(
        sans(&ca.leaf("jira.test").unwrap()),
        ["DNSName(\"jira.test\")"]
    );
    let ip = sans(&ca.leaf("192.0.2.7").unwrap());
    assert_eq!(ip.len(), 1);
    assert!(ip[0].starts_with("IPAddress([192, 0, 2, 7]"), "{ip:?}");
    let v6 = sans(&ca.leaf("2001:db8::1").unwrap());
    assert!(v6[0].starts_with("IPAddress([32, 1, 13, 184"), "{v6:?}");
    // The chain carries the CA after the leaf.
    assert_eq!(ca.leaf("jira.test").unwrap().cert.len(), 2);
}

#[test]
fn leaf_verifies_against_the_ca_for_its_host_only() {
    let (cert, key) = generate("test CA", 1).unwrap();
    let ca = Authority::from_pem(cert.as_bytes(), key.as_bytes(), 8).unwrap();
    let leaf = ca.leaf("jira.test").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der.clone()).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let end = leaf.cert.first().unwrap();
    let now = rustls::pki_types::UnixTime::now();
    let name = |n: &str| rustls::pki_types::ServerName::try_from(n.to_string()).unwrap();
    assert!(verifier
        .verify_server_cert(end, &leaf.cert[1..], &name("jira.test"), &[], now)
        .is_ok());
    assert!(verifier
        .verify_server_cert(end, &leaf.cert[1..], &name("evil.test"), &[], now)
        .is_err());
}

#[test]
fn cache_is_bounded_and_keeps_the_recently_used() {
    let ca = authority(3);
    let first = ca.leaf("a.test").unwrap();
    ca.leaf("b.test").unwrap();
    ca.leaf("c.test").unwrap();
    // a is used again, so b is the least recently used when d arrives.
    assert!(Arc::ptr_eq(&first, &ca.leaf("a.test").unwrap()));
    ca.leaf("d.test").unwrap();
    assert_eq!(ca.cached(), 3);
    assert!(Arc::ptr_eq(&first, &ca.leaf("a.test").unwrap()));
    for i in 0..50 {
        ca.leaf(&format!("h{i}.test")).unwrap();
        assert!(ca.cached() <= 3);
    }
}

#[test]
fn refuses_a_key_that_is_not_the_certificates_and_a_non_ca_certificate() {
    let (cert, _) = generate("one", 1).unwrap();
    let (_, other_key) = generate("two", 1).unwrap();
    let err = Authority::from_pem(cert.as_bytes(), other_key.as_bytes(), 8).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");

    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["x.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let err =
        Authority::from_pem(leaf.pem().as_bytes(), key.serialize_pem().as_bytes(), 8).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
}

#[test]
fn reads_sec1_ec_keys_as_helm_generates_them() {
    // SEC1 `EC PRIVATE KEY` (openssl ecparam -genkey / Helm genPrivateKey "ecdsa") for P-256.
    let key = KeyPair::generate().unwrap();
    let pkcs8 = key.serialize_der();
    // PKCS#8 → SEC1: the OCTET STRING at the end of PrivateKeyInfo is the SEC1 structure.
    let alg_at = pkcs8
        .windows(key::EC_P256.len())
        .position(|w| w == key::EC_P256)
        .unwrap();
    let at = alg_at + key::EC_P256.len();
    assert_eq!(pkcs8[at], 0x04);
    assert!(pkcs8[at + 1] < 0x80, "short-form length expected");
    let sec1 = &pkcs8[at + 2..at + 2 + pkcs8[at + 1] as usize];
    let body: Vec<String> = base64(sec1)
        .as_bytes()
        .chunks(64)
        .map(|l| String::from_utf8(l.to_vec()).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        body.join("\n")
    );
    let parsed = key::parse(pem.as_bytes()).unwrap();
    assert_eq!(
        parsed.subject_public_key_info(),
        key.subject_public_key_info()
    );
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
