//! Golden cases as data: every `tests/golden/*.yaml` is one request against a configuration
//! (default: the quickstart) and the action, attributes and decision it must get. Adding a
//! case needs no Rust. `tests/differential.rs` runs the same inputs through both evaluators.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toolgate_policy::config::Config;
use toolgate_policy::evaluate::Policy;
use toolgate_policy::testing::{self, Golden};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn every_golden_case_gets_its_action_attributes_and_decision() {
    let dir = Path::new(ROOT).join("tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut loaded: BTreeMap<String, (Config, Policy)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut rejects = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let golden: Golden =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            !golden.note.trim().is_empty(),
            "{}: a case needs a note",
            file.display()
        );
        rejects += usize::from(golden.want.decision == "reject");
        let config_path = golden
            .config
            .clone()
            .unwrap_or_else(|| Golden::DEFAULT_CONFIG.to_string());
        let (config, policy) = loaded.entry(config_path.clone()).or_insert_with(|| {
            let config =
                Config::load(&Path::new(ROOT).join(&config_path)).unwrap_or_else(|e| panic!("{e}"));
            let policy = Policy::compile(&config.policy).unwrap();
            (config, policy)
        });
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for case in testing::run_fixture(config, policy, &name, &golden.into_fixture()) {
            if let Some(why) = case.failure {
                failures.push(format!("{}: {why}", case.name));
            }
        }
    }
    assert!(files.len() >= 40, "only {} golden cases", files.len());
    assert!(
        rejects >= 20,
        "every normalisation rule needs its case; {rejects} rejects"
    );
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
