//! Where configuration, policy and secret files are read from, and how environment variables
//! are read: the disk and the process for a deployment, an embedded tree and a map for the
//! quickstart and for tests (which never mutate the process environment).

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// A read-only tree of files addressed by paths relative to the config file's directory.
pub trait Files: Send + Sync + std::fmt::Debug {
    /// Read a file; relative paths resolve against the tree's base.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Expand a glob pattern (relative to the base) into matching files, sorted.
    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String>;
    /// The absolute location of `path`, where the tree is on disk.
    fn locate(&self, path: &Path) -> PathBuf;
}

/// Files on disk under a base directory.
#[derive(Debug, Clone)]
pub struct DiskFiles {
    base: PathBuf,
}

impl DiskFiles {
    /// A tree rooted at `base` (the config file's directory).
    pub fn new(base: PathBuf) -> DiskFiles {
        let base = std::path::absolute(&base).unwrap_or(base);
        DiskFiles { base }
    }
}

impl Files for DiskFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(self.locate(path))
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        let full = self.locate(Path::new(pattern));
        let full = full.to_str().ok_or("pattern is not valid UTF-8")?;
        let mut out = Vec::new();
        for entry in glob::glob(full).map_err(|e| e.to_string())? {
            let found = entry.map_err(|e| e.to_string())?;
            // Relative to the base, as the pattern was written: shorter in messages.
            out.push(
                found
                    .strip_prefix(&self.base)
                    .map(Path::to_path_buf)
                    .unwrap_or(found),
            );
        }
        out.sort();
        Ok(out)
    }

    fn locate(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }
}

/// Files compiled into the binary (the quickstart), keyed by relative path.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedFiles {
    files: BTreeMap<PathBuf, &'static [u8]>,
}

impl EmbeddedFiles {
    /// A tree from (relative path, contents) pairs.
    pub fn new(files: &[(&str, &'static [u8])]) -> EmbeddedFiles {
        EmbeddedFiles {
            files: files
                .iter()
                .map(|(p, c)| (clean(Path::new(p)), *c))
                .collect(),
        }
    }
}

impl Files for EmbeddedFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files
            .get(&clean(path))
            .map(|c| c.to_vec())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "not in the embedded quickstart")
            })
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        let pattern = glob::Pattern::new(pattern).map_err(|e| e.to_string())?;
        Ok(self
            .files
            .keys()
            .filter(|p| pattern.matches_path(p))
            .cloned()
            .collect())
    }

    fn locate(&self, path: &Path) -> PathBuf {
        Path::new("<embedded>").join(clean(path))
    }
}

fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Read access to environment variables.
pub trait Vars: Send + Sync + std::fmt::Debug {
    /// The value of `name`, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed set of variables (tests, the quickstart).
#[derive(Debug, Clone, Default)]
pub struct StaticEnv(pub BTreeMap<String, String>);

impl Vars for StaticEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// FNV-1a over `bytes`, continuing from `h`.
pub(crate) fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A `Files` that hashes every path and byte read through it, so a reloader can tell
/// whether anything a config depends on changed.
#[derive(Debug)]
pub(crate) struct Recording<'a> {
    inner: &'a dyn Files,
    hash: Mutex<u64>,
}

impl<'a> Recording<'a> {
    pub(crate) fn new(inner: &'a dyn Files, seed: &[u8]) -> Recording<'a> {
        Recording {
            inner,
            hash: Mutex::new(fnv(0xcbf2_9ce4_8422_2325, seed)),
        }
    }

    pub(crate) fn fingerprint(&self) -> u64 {
        self.hash.lock().map(|h| *h).unwrap_or(0)
    }

    fn eat(&self, bytes: &[u8]) {
        if let Ok(mut h) = self.hash.lock() {
            *h = fnv(*h, bytes);
        }
    }
}

impl Files for Recording<'_> {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let result = self.inner.read(path);
        self.eat(path.as_os_str().as_encoded_bytes());
        match &result {
            Ok(bytes) => self.eat(bytes),
            Err(e) => self.eat(e.to_string().as_bytes()),
        }
        result
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        self.inner.glob(pattern)
    }

    fn locate(&self, path: &Path) -> PathBuf {
        self.inner.locate(path)
    }
}
