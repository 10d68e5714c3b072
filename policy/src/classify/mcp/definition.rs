//! Pinned tool definitions. A server that silently changes a tool's description or schema
//! after it was approved ("rug pull") changes what the model is told the tool does; toolgate
//! keeps a digest of each definition and tells policy whether it changed
//! (`input.action.definition`).
//!
//! The digest is SHA-256 over the canonical JSON (keys sorted, no whitespace) of the
//! definition's `name`, `title`, `description`, `inputSchema`, `outputSchema` and
//! `annotations` — what the model reads and what the call accepts; `_meta` and `icons` are
//! left out.
//!
//! [`Definitions`] holds what toolgate learned from the `tools/list` answers it forwarded: per
//! MCP tool (catalog tool, tool name) the definition seen last, and the first one seen (the
//! pin, when no lock file pins the catalog tool). Bounds: at most `max` tools in all, names
//! up to [`MAX_NAME`] bytes, [`super::params::MAX_PARAM_HEADERS`] mirrored arguments each.
//! When full, a new tool is not remembered (its calls show `known: false`, `pinned: false`);
//! nothing is ever evicted, so a server cannot flush a pin by listing many tools. It lives in
//! memory: a restart forgets first-sight pins (the lock file is the durable form).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use regorus::Value;
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};

use super::params::{self, ParamHeader};

/// The definition members the digest covers.
pub const DIGESTED: [&str; 6] = [
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
];
/// The longest tool name remembered.
pub const MAX_NAME: usize = 256;
/// Default for `mcp.max_definitions`.
pub const DEFAULT_MAX_DEFINITIONS: usize = 4096;

/// SHA-256 of a definition's canonical JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 71];
        let (prefix, hex) = out.split_at_mut(7);
        prefix.copy_from_slice(b"sha256:");
        for (pair, b) in hex.chunks_exact_mut(2).zip(self.0) {
            if let [hi, lo] = pair {
                *hi = HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
                *lo = HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0');
            }
        }
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Digest, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("{s:?} is not sha256:<64 hex digits>"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{s:?} is not sha256:<64 hex digits>"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).unwrap_or("00");
            *byte = u8::from_str_radix(pair, 16).map_err(|e| e.to_string())?;
        }
        Ok(Digest(out))
    }
}

/// The digest of tool definition `tool` (a `tools/list` entry): SHA-256 of its canonical
/// JSON, written straight into the hash.
pub fn digest(tool: &Json) -> Digest {
    let mut hasher = Hashing(Sha256::new());
    hasher.0.update(b"{");
    let mut first = true;
    for key in SORTED {
        if let Some(v) = tool.get(key) {
            if !first {
                hasher.0.update(b",");
            }
            first = false;
            let _ = serde_json::to_writer(&mut hasher, key);
            hasher.0.update(b":");
            canonical(v, &mut hasher);
        }
    }
    hasher.0.update(b"}");
    Digest(hasher.0.finalize().into())
}

/// [`DIGESTED`] in byte order, as the canonical object lists them.
const SORTED: [&str; 6] = [
    "annotations",
    "description",
    "inputSchema",
    "name",
    "outputSchema",
    "title",
];

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace, strings escaped
/// and numbers printed as serde_json does. serde_json's `Map` is a `BTreeMap` (toolgate does
/// not enable `preserve_order`), so its compact output is that form; a test digests the same
/// definition written in two key orders and requires one digest.
pub fn canonical(v: &Json, out: &mut impl std::io::Write) {
    let _ = serde_json::to_writer(out, v);
}

/// Bytes written into a hash.
struct Hashing(Sha256);

impl std::io::Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where a pin came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The tool's lock file (`tools[].lock`, written by `toolgate mcp pin`).
    Lock,
    /// The first definition toolgate saw for the tool since it started.
    FirstSight,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Lock => "lock",
            Source::FirstSight => "first_sight",
        }
    }
}

/// One tool's definition as toolgate knows it: its digest and its mirrored arguments
/// (`None` when its `x-mcp-header` annotations are invalid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub digest: Digest,
    pub params: Option<Arc<[ParamHeader]>>,
}

impl Known {
    /// What toolgate keeps of definition `tool`.
    pub fn of(tool: &Json) -> Known {
        Known::with_digest(tool, digest(tool))
    }

    /// What toolgate keeps of definition `tool`, whose digest is `digest`.
    fn with_digest(tool: &Json, digest: Digest) -> Known {
        let params = tool
            .get("inputSchema")
            .map_or(Ok(Vec::new()), params::param_headers)
            .ok()
            .map(Arc::from);
        Known { digest, params }
    }
}

/// A catalog tool's lock file: the pinned definition of each of its MCP tools.
#[derive(Debug, Clone, Default)]
pub struct Lock {
    /// The file, as configured (for reasons and messages).
    pub file: String,
    pub tools: BTreeMap<String, Known>,
}

/// What policy is told about a tool's definition (`input.action.definition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The definition toolgate saw last (`None`: never seen).
    pub current: Option<Digest>,
    /// The pin and where it came from.
    pub pin: Option<(Digest, Source)>,
    /// The lock file, when the pin came from one.
    pub lock_file: Option<String>,
}

impl Status {
    /// Whether the definition seen last differs from the pin.
    pub fn changed(&self) -> bool {
        matches!((self.current, self.pin), (Some(c), Some((p, _))) if c != p)
    }

    /// `{known, digest, pinned, pinned_digest, source, lock, changed}`.
    pub fn to_value(&self) -> Value {
        let digest = |d: Option<Digest>| d.map_or(Value::Null, |d| Value::from(d.to_string()));
        let mut map: BTreeMap<Value, Value> = BTreeMap::new();
        map.insert(Value::from("known"), Value::from(self.current.is_some()));
        map.insert(Value::from("digest"), digest(self.current));
        map.insert(Value::from("pinned"), Value::from(self.pin.is_some()));
        map.insert(Value::from("pinned_digest"), digest(self.pin.map(|p| p.0)));
        map.insert(
            Value::from("source"),
            self.pin
                .map_or(Value::Null, |(_, s)| Value::from(s.as_str())),
        );
        map.insert(
            Value::from("lock"),
            self.lock_file.as_deref().map_or(Value::Null, Value::from),
        );
        map.insert(Value::from("changed"), Value::from(self.changed()));
        Value::from(map)
    }
}

#[derive(Debug)]
struct Entry {
    current: Known,
    first: Digest,
}

/// The definitions toolgate has seen, per (catalog tool, MCP tool name); bounded, never
/// evicted (see the module documentation).
#[derive(Debug)]
pub struct Definitions {
    max: usize,
    seen: Mutex<HashMap<(Arc<str>, String), Entry>>,
}

impl Definitions {
    /// A store remembering at most `max` tools.
    pub fn new(max: usize) -> Definitions {
        Definitions {
            max,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Remember definition `known` of tool `name` of catalog tool `tool`, seen in a listing.
    /// `false` when it could not be remembered (the store is full, or the name too long).
    pub fn observe(&self, tool: &Arc<str>, name: &str, known: Known) -> bool {
        self.remember(tool, name, known).is_some()
    }

    /// Remember definition `tool` of `name` (as [`Definitions::observe`]) and say what policy
    /// is told about it: the listing's path. A definition seen before unchanged is only
    /// digested (its mirrored arguments are not read again).
    pub fn observe_status(
        &self,
        catalog: &Arc<str>,
        name: &str,
        tool: &Json,
        lock: Option<&Lock>,
    ) -> Status {
        let digest = digest(tool);
        let unchanged = self.seen.lock().ok().and_then(|seen| {
            seen.get(&(catalog.clone(), name.to_string()))
                .filter(|e| e.current.digest == digest)
                .map(|e| e.first)
        });
        let first = match unchanged {
            Some(first) => Some(first),
            None => self.remember(catalog, name, Known::with_digest(tool, digest)),
        };
        let (pin, lock_file) = match lock {
            Some(lock) => (
                lock.tools.get(name).map(|k| (k.digest, Source::Lock)),
                Some(lock.file.clone()),
            ),
            None => (first.map(|f| (f, Source::FirstSight)), None),
        };
        Status {
            current: Some(digest),
            pin,
            lock_file,
        }
    }

    /// Remember definition `known` of `name`; its first-seen digest, or `None` when it could
    /// not be remembered (the store is full, or the name too long).
    fn remember(&self, tool: &Arc<str>, name: &str, known: Known) -> Option<Digest> {
        if name.len() > MAX_NAME {
            return None;
        }
        let mut seen = self.seen.lock().ok()?;
        let key = (tool.clone(), name.to_string());
        if let Some(entry) = seen.get_mut(&key) {
            entry.current = known;
            return Some(entry.first);
        }
        if seen.len() >= self.max {
            return None;
        }
        let first = known.digest;
        seen.insert(
            key,
            Entry {
                current: known,
                first,
            },
        );
        Some(first)
    }

    /// The definition of `name` toolgate last saw, if any.
    pub fn current(&self, tool: &str, name: &str) -> Option<Known> {
        let seen = self.seen.lock().ok()?;
        seen.get(&(Arc::from(tool), name.to_string()))
            .map(|e| e.current.clone())
    }

    /// What policy is told about tool `name` of catalog tool `tool`, pinned by `lock` when the
    /// catalog tool has a lock file (which then replaces first-sight pins).
    pub fn status(&self, tool: &str, name: &str, lock: Option<&Lock>) -> Status {
        let entry = self.seen.lock().ok().and_then(|seen| {
            seen.get(&(Arc::from(tool), name.to_string()))
                .map(|e| (e.current.digest, e.first))
        });
        let current = entry.map(|(c, _)| c);
        let (pin, lock_file) = match lock {
            Some(lock) => (
                lock.tools.get(name).map(|k| (k.digest, Source::Lock)),
                Some(lock.file.clone()),
            ),
            None => (entry.map(|(_, f)| (f, Source::FirstSight)), None),
        };
        Status {
            current,
            pin,
            lock_file,
        }
    }

    /// How many tools are remembered.
    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether no tool is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The mirrored arguments of tool `name` as toolgate knows its definition: the last one seen
/// in a listing, else the lock file's.
pub fn declared_params(
    definitions: &Definitions,
    tool: &str,
    name: &str,
    lock: Option<&Lock>,
) -> Option<Arc<[ParamHeader]>> {
    definitions
        .current(tool, name)
        .or_else(|| lock.and_then(|l| l.tools.get(name).cloned()))
        .and_then(|k| k.params)
}
