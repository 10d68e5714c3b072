//! MCP settings: `mcp:` (the bounds of the `tools/list` filter and of the definitions toolgate
//! remembers) and each MCP tool's `lock:` file of pinned tool definitions, which
//! `toolgate mcp pin` writes:
//!
//! ```yaml
//! tool: crm
//! tools:
//!   search:
//!     digest: sha256:…
//!     definition: { name: search, description: …, inputSchema: … }
//! ```
//!
//! A lock is read at load (and on every reload); a digest that does not match its definition
//! is an error, so a hand edit of a description cannot go unnoticed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

use super::validate::Collector;
use super::Files;
use crate::classify::mcp::definition::{self, Digest, Known, Lock};

/// Default for `mcp.max_list_bytes`: the largest `tools/list` answer toolgate filters.
pub const DEFAULT_MAX_LIST_BYTES: usize = 1 << 20;
/// The largest `mcp.max_list_bytes` accepted.
pub const LARGEST_MAX_LIST_BYTES: usize = 16 << 20;

/// `mcp:` and the lock files of MCP tools.
#[derive(Debug, Clone)]
pub struct McpSettings {
    /// A `tools/list` answer (a JSON body, or one SSE event) larger than this is refused
    /// rather than buffered.
    pub max_list_bytes: usize,
    /// Most tool definitions remembered at once (first-sight pins).
    pub max_definitions: usize,
    /// Per catalog tool name, its lock file's pins.
    pub locks: BTreeMap<String, Arc<Lock>>,
}

impl Default for McpSettings {
    fn default() -> Self {
        McpSettings {
            max_list_bytes: DEFAULT_MAX_LIST_BYTES,
            max_definitions: definition::DEFAULT_MAX_DEFINITIONS,
            locks: BTreeMap::new(),
        }
    }
}

/// `mcp:` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawMcp {
    pub max_list_bytes: Option<usize>,
    pub max_definitions: Option<usize>,
}

/// A lock file as written and read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// The catalog tool whose MCP server the definitions came from.
    pub tool: String,
    /// Per MCP tool name, its pinned definition.
    pub tools: BTreeMap<String, Pinned>,
}

/// One pinned definition.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pinned {
    /// `sha256:<hex>` of the definition's canonical JSON.
    pub digest: String,
    /// The definition as the server listed it (what a reviewer reads).
    pub definition: serde_json::Value,
}

/// Compile `mcp:`.
pub(super) fn settings(c: &mut Collector, raw: &RawMcp) -> McpSettings {
    let max_list_bytes = raw.max_list_bytes.unwrap_or(DEFAULT_MAX_LIST_BYTES);
    if max_list_bytes == 0 || max_list_bytes > LARGEST_MAX_LIST_BYTES {
        c.push(
            "mcp.max_list_bytes",
            format!("must be between 1 and {LARGEST_MAX_LIST_BYTES}"),
        );
    }
    let max_definitions = raw
        .max_definitions
        .unwrap_or(definition::DEFAULT_MAX_DEFINITIONS);
    if max_definitions == 0 {
        c.push("mcp.max_definitions", "must be at least 1");
    }
    McpSettings {
        max_list_bytes: max_list_bytes.clamp(1, LARGEST_MAX_LIST_BYTES),
        max_definitions: max_definitions.max(1),
        locks: BTreeMap::new(),
    }
}

/// Read and check the lock file `file` of catalog tool `tool` (config field `path`).
pub(super) fn lock(
    c: &mut Collector,
    path: &str,
    tool: &str,
    file: &str,
    files: &dyn Files,
) -> Option<Lock> {
    let bytes = match files.read(Path::new(file)) {
        Ok(b) => b,
        Err(e) => {
            c.push(
                path,
                format!("cannot read {file}: {e} (toolgate mcp pin writes it)"),
            );
            return None;
        }
    };
    let parsed: LockFile = match std::str::from_utf8(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_yaml::from_str(t).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            c.push(path, format!("{file}: {e}"));
            return None;
        }
    };
    if parsed.tool != tool {
        c.push(
            path,
            format!(
                "{file} pins the definitions of tool {:?}, not {tool:?}",
                parsed.tool
            ),
        );
    }
    let mut tools = BTreeMap::new();
    for (name, pinned) in parsed.tools {
        let wanted: Result<Digest, String> = pinned.digest.parse();
        let actual = definition::digest(&pinned.definition);
        let named = pinned.definition.get("name").and_then(|n| n.as_str());
        match wanted {
            Err(e) => c.push(path, format!("{file}: tools.{name}.digest: {e}")),
            Ok(_) if named != Some(name.as_str()) => c.push(
                path,
                format!("{file}: tools.{name}.definition.name must be {name:?}"),
            ),
            Ok(w) if w != actual => c.push(
                path,
                format!(
                    "{file}: tools.{name}: digest {w} does not match its definition ({actual}); the file was edited: run toolgate mcp pin again"
                ),
            ),
            Ok(_) => {
                tools.insert(name, Known::of(&pinned.definition));
            }
        }
    }
    Some(Lock {
        file: file.to_string(),
        tools,
    })
}
