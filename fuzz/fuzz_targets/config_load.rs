//! config_load: arbitrary text as `toolgate.yaml` through `Config::load_from`, the loader
//! `toolgate run`, `check` and every hot reload use, with fixed side files beside it: the
//! embedded quickstart's policy, data and secrets, and the fixtures in fuzz/files/ (signing
//! keys, a JWKS, an agent identity token, an interception CA, an operator token). Nothing is
//! read from the disk or the environment.
//!
//! Input: the YAML text. Besides "no panic" (and no hang: YAML aliases, deep nesting): a
//! refusal names at least one problem, each with a message; a loaded config routes only to
//! its own tools, reaches each tool by each of its exact hosts, keeps templates that print and
//! re-parse to themselves, and caps the classified body at 64 KiB.
#![no_main]

use std::io;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use toolgate_policy::classify::{split_host_port, PathTemplate};
use toolgate_policy::config::{body_cap, Config, EmbeddedFiles, Files, StaticEnv, MAX_BODY_BYTES};
use toolgate_policy::quickstart;

/// The fixtures in fuzz/files/, by the relative path a config names them with.
const FIXTURES: &[(&str, &[u8])] = &[
    (
        "keys/ed25519.pem",
        include_bytes!("../files/keys/ed25519.pem"),
    ),
    ("keys/es256.pem", include_bytes!("../files/keys/es256.pem")),
    ("keys/jwks.json", include_bytes!("../files/keys/jwks.json")),
    (
        "identity/agent.jwt",
        include_bytes!("../files/identity/agent.jwt"),
    ),
    ("ca/ca.pem", include_bytes!("../files/ca/ca.pem")),
    ("ca/ca-key.pem", include_bytes!("../files/ca/ca-key.pem")),
    ("operator-token", include_bytes!("../files/operator-token")),
    (
        "sts-client-secret",
        include_bytes!("../files/sts-client-secret"),
    ),
    (
        "policy/golden.rego",
        include_bytes!("../../tests/golden/config/policy/golden.rego"),
    ),
];

/// The fuzzed `toolgate.yaml` in front of the fixed side files.
#[derive(Debug)]
struct FuzzFiles<'a> {
    yaml: &'a [u8],
    side: &'static EmbeddedFiles,
}

impl Files for FuzzFiles<'_> {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        if path == Path::new("toolgate.yaml") {
            return Ok(self.yaml.to_vec());
        }
        self.side.read(path)
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        self.side.glob(pattern)
    }

    fn locate(&self, path: &Path) -> PathBuf {
        self.side.locate(path)
    }
}

fn side_files() -> &'static EmbeddedFiles {
    static SIDE: std::sync::OnceLock<EmbeddedFiles> = std::sync::OnceLock::new();
    SIDE.get_or_init(|| {
        let all: Vec<(&str, &'static [u8])> = quickstart::FILES
            .iter()
            .filter(|(p, _)| *p != "toolgate.yaml")
            .chain(FIXTURES)
            .copied()
            .collect();
        EmbeddedFiles::new(&all)
    })
}

fuzz_target!(|yaml: &[u8]| {
    let files = FuzzFiles {
        yaml,
        side: side_files(),
    };
    let vars = StaticEnv(
        [(
            "AGENT_ID".to_string(),
            "spiffe://example.org/ns/fuzz/sa/env".to_string(),
        )]
        .into(),
    );
    let config = match Config::load_from(Path::new("toolgate.yaml"), &files, &vars) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.errors.is_empty(), "refused without a problem");
            for problem in &e.errors {
                assert!(
                    !problem.message.is_empty(),
                    "a problem at {:?} without a message",
                    problem.path
                );
            }
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let catalog = &config.catalog;
    for route in &config.routes {
        assert!(
            catalog.tool(route.tool).is_some(),
            "route {} to no tool",
            route.prefix
        );
        assert!(route.prefix.starts_with('/') && route.prefix.ends_with('/'));
    }
    for (id, tool) in catalog.tools().iter().enumerate() {
        for host in tool.hosts.iter().filter(|h| !h.starts_with('*')) {
            let (name, port) = split_host_port(host);
            // A host without a port is reached on any port no other tool claims exactly.
            let port = port.unwrap_or(1);
            let claimed = catalog.tools().iter().any(|t| {
                t.hosts
                    .iter()
                    .any(|h| split_host_port(h) == (name, Some(port)))
            });
            if port == 1 && claimed {
                continue;
            }
            assert_eq!(
                catalog.tool_for_host(name, port),
                Some(id),
                "tool {} is not reached by its host {host:?}",
                tool.name
            );
        }
        for action in tool.actions() {
            let printed = action.template.to_string();
            match printed.parse::<PathTemplate>() {
                Ok(t) => assert_eq!(
                    t, action.template,
                    "template {printed:?} re-parses otherwise"
                ),
                Err(e) => panic!(
                    "template {printed:?} of {} does not re-parse: {e}",
                    action.name
                ),
            }
        }
    }
    assert!(body_cap(&config.limits) <= MAX_BODY_BYTES);
});
