//! What the fuzz targets share: the fixed configurations they run against, the reading of a
//! raw HTTP/1.1 request that `request_head` feeds, and the invariants every canonical request
//! and every refusal must satisfy. A failed invariant panics, which libFuzzer reports as a
//! crash with the input that caused it.

pub mod invariants;
pub mod raw;

use std::path::Path;
use std::sync::OnceLock;

use toolgate_policy::config::{Config, EmbeddedFiles, StaticEnv};
use toolgate_policy::quickstart;

/// The golden cases' configuration (tests/golden/config): body rules, form bodies, an MCP
/// tool, a tool that accepts overrides and a named route.
pub fn golden() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/config/toolgate.yaml");
        match Config::load(&path) {
            Ok(c) => c,
            Err(e) => panic!("the golden config does not load: {e}"),
        }
    })
}

/// The embedded quickstart, as `toolgate run` serves it without `-c`.
pub fn quickstart() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let files = EmbeddedFiles::new(quickstart::FILES);
        match Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()) {
            Ok(c) => c,
            Err(e) => panic!("the quickstart does not load: {e}"),
        }
    })
}

/// The catalog index of the tool named `name` in `config`.
pub fn tool_index(config: &Config, name: &str) -> usize {
    match config.catalog.tools().iter().position(|t| &*t.name == name) {
        Some(i) => i,
        None => panic!("no tool {name:?} in the fixed config"),
    }
}
