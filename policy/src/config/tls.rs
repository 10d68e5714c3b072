//! `tls.ca` (the interception CA, read at load time so a reload sees a changed file) and the
//! checks on `listen.transparent`. The certificate and key are parsed by the proxy, which owns
//! the TLS stack; here they are read and sanity-checked so `toolgate check` names the field.

use std::fmt;
use std::path::{Path, PathBuf};

use super::raw::RawCa;
use super::validate::Collector;
use super::{Files, Listen};

/// Default bound on minted leaf certificates kept in memory.
pub const DEFAULT_LEAF_CACHE: usize = 1024;

/// The interception CA as configured: file locations and their contents.
#[derive(Clone)]
pub struct CaSource {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// PEM text of the CA certificate (what agents trust, served at admin `GET /ca.pem`).
    pub cert_pem: Vec<u8>,
    /// PEM text of the CA private key: never printed.
    key_pem: Vec<u8>,
    /// Most leaf certificates kept at once.
    pub cache_entries: usize,
}

impl CaSource {
    /// The private key's PEM text.
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

impl fmt::Debug for CaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaSource")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("key_pem", &"<redacted>")
            .field("cache_entries", &self.cache_entries)
            .finish()
    }
}

pub(super) fn ca(c: &mut Collector, raw: &RawCa, files: &dyn Files) -> Option<CaSource> {
    let mut read = |field: &str, file: &str, marker: &str, what: &str| -> Option<Vec<u8>> {
        let path = format!("tls.ca.{field}");
        let located = files.locate(Path::new(file));
        match files.read(Path::new(file)) {
            Ok(bytes) if contains(&bytes, marker) => Some(bytes),
            Ok(_) => {
                c.push(path, format!("{} holds no PEM {what}", located.display()));
                None
            }
            Err(e) => {
                c.push(path, format!("cannot read {}: {e}", located.display()));
                None
            }
        }
    };
    let cert = read(
        "cert",
        &raw.cert,
        "-----BEGIN CERTIFICATE-----",
        "certificate",
    );
    let key = read("key", &raw.key, "PRIVATE KEY-----", "private key");
    let cache_entries = raw.cache_entries.unwrap_or(DEFAULT_LEAF_CACHE);
    if cache_entries == 0 {
        c.push("tls.ca.cache_entries", "must be at least 1");
    }
    Some(CaSource {
        cert_path: files.locate(Path::new(&raw.cert)),
        key_path: files.locate(Path::new(&raw.key)),
        cert_pem: cert?,
        key_pem: key?,
        cache_entries: cache_entries.max(1),
    })
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The transparent listener must not share an address with the other two.
pub(super) fn distinct_listeners(c: &mut Collector, listen: &Listen) {
    if let Some(t) = listen.transparent {
        if t == listen.proxy || t == listen.admin {
            c.push(
                "listen.transparent",
                format!("{t} is also listen.proxy or listen.admin"),
            );
        }
    }
}
