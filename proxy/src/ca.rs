//! The interception CA: loads `tls.ca`, mints a leaf certificate per intercepted host (a DNS
//! SAN, or an IP SAN for IP targets), and keeps a bounded cache of them. `toolgate ca init`
//! creates a CA with [`generate`].
//!
//! Every leaf shares one ECDSA P-256 key generated at load: minting is then one signature by
//! the CA, not a key generation per host. The key never leaves memory and changes on restart.

mod key;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use toolgate_policy::config::CaSource;
use x509_parser::prelude::FromDer;

/// How long a minted leaf is valid; it is re-minted after half of that.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Leaves start this long in the past, for agents whose clocks run behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Why `tls.ca` cannot be used, or a leaf cannot be minted.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("tls.ca.cert: {0}")]
    Cert(String),
    #[error("tls.ca.key: {0}")]
    Key(String),
    #[error("cannot mint a certificate for {host}: {reason}")]
    Mint { host: String, reason: String },
}

/// The loaded CA and its leaf cache.
pub struct Authority {
    cert_pem: Arc<[u8]>,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<LeafCache>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// Parse and check the configured CA: a CA certificate whose public key is the key's.
    pub fn load(source: &CaSource) -> Result<Authority, CaError> {
        Authority::from_pem(&source.cert_pem, source.key_pem(), source.cache_entries)
    }

    /// A CA from PEM texts, caching at most `cache_entries` leaves.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cache_entries: usize,
    ) -> Result<Authority, CaError> {
        let ca_der = rustls_pemfile::certs(&mut &cert_pem[..])
            .next()
            .ok_or_else(|| CaError::Cert("holds no PEM certificate".to_string()))?
            .map_err(|e| CaError::Cert(e.to_string()))?;
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&ca_der)
            .map_err(|e| CaError::Cert(format!("not an X.509 certificate: {e}")))?;
        let is_ca = parsed
            .tbs_certificate
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca);
        if !is_ca {
            return Err(CaError::Cert(
                "not a CA certificate (basicConstraints CA:TRUE is missing)".to_string(),
            ));
        }
        let ca_key = key::parse(key_pem).map_err(CaError::Key)?;
        if ca_key.subject_public_key_info() != parsed.tbs_certificate.subject_pki.raw {
            return Err(CaError::Key(
                "this key does not belong to the tls.ca.cert certificate".to_string(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)
            .map_err(|e| CaError::Cert(format!("cannot issue with it: {e}")))?;
        let leaf_key = KeyPair::generate().map_err(|e| CaError::Key(e.to_string()))?;
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signer = rustls::crypto::ring::sign::any_supported_type(&leaf_der)
            .map_err(|e| CaError::Key(e.to_string()))?;
        Ok(Authority {
            cert_pem: Arc::from(cert_pem),
            ca_der: ca_der.into_owned(),
            issuer,
            leaf_key,
            leaf_signer,
            cache: Mutex::new(LeafCache::new(cache_entries)),
        })
    }

    /// The CA certificate, PEM (for agents' trust bundles).
    pub fn cert_pem(&self) -> Arc<[u8]> {
        self.cert_pem.clone()
    }

    /// The certificate chain and key to present for `host` (canonical name or IP literal),
    /// from the cache or freshly minted.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(hit) = cache.get(host) {
                return Ok(hit);
            }
        }
        let leaf = Arc::new(self.mint(host)?);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(host, leaf.clone());
        }
        Ok(leaf)
    }

    /// Leaves currently cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Sign a new leaf for `host`, bypassing the cache.
    pub fn mint(&self, host: &str) -> Result<CertifiedKey, CaError> {
        let fail = |reason: String| CaError::Mint {
            host: host.chars().take(256).collect(),
            reason,
        };
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(|e| fail(format!("{e}")))?),
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        params.serial_number = Some(serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            self.leaf_signer.clone(),
        ))
    }
}

/// A positive 128-bit serial (RFC 5280 allows up to 20 bytes; the top bit clear keeps it
/// positive in DER).
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Leaves by host, least recently used evicted first once `capacity` is reached.
#[derive(Debug)]
struct LeafCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (Arc<CertifiedKey>, Instant, u64)>,
}

impl LeafCache {
    fn new(capacity: usize) -> LeafCache {
        LeafCache {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&mut self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(host)?;
        if entry.1.elapsed() > LEAF_VALIDITY / 2 {
            self.entries.remove(host);
            return None;
        }
        entry.2 = tick;
        Some(entry.0.clone())
    }

    fn insert(&mut self, host: &str, leaf: Arc<CertifiedKey>) {
        self.tick += 1;
        if !self.entries.contains_key(host) && self.entries.len() >= self.capacity {
            // A scan per mint: minting costs far more than walking `capacity` entries.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries
            .insert(host.to_string(), (leaf, Instant::now(), self.tick));
    }
}

/// A new CA for `toolgate ca init`: (certificate PEM, PKCS#8 private key PEM). ECDSA P-256,
/// CA:TRUE with path length 0 (it signs leaves only), valid for `days`.
pub fn generate(common_name: &str, days: u32) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "toolgate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * 24 * 3600)).into();
    params.serial_number = Some(serial());
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Cert(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}
