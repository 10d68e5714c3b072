//! The RVM against the interpreter: every policy and every request input in the repository
//! (example fixtures, golden cases) must get the identical result from both evaluators.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use toolgate_policy::config::Config;
use toolgate_policy::evaluate::{Evaluator, Policy};
use toolgate_policy::testing::{self, Fixture, Golden};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Every (configuration, fixture) pair in the repository.
fn cases() -> Vec<(PathBuf, String, Fixture)> {
    let mut out = Vec::new();
    let mut examples: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    examples.sort();
    for example in examples {
        let config = example.join("toolgate.yaml");
        if !config.is_file() {
            continue;
        }
        for f in files(&example.join("tests"), "yaml") {
            let fixture = testing::load_fixture(&f).unwrap();
            out.push((config.clone(), f.display().to_string(), fixture));
        }
    }
    for g in files(&Path::new(ROOT).join("tests/golden"), "yaml") {
        let text = std::fs::read_to_string(&g).unwrap();
        let golden: Golden =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", g.display()));
        let config =
            Path::new(ROOT).join(golden.config.as_deref().unwrap_or(Golden::DEFAULT_CONFIG));
        out.push((config, g.display().to_string(), golden.into_fixture()));
    }
    out.dedup_by(|a, b| a.1 == b.1);
    out
}

#[test]
fn rvm_and_interpreter_agree_on_every_policy_and_input_in_the_repository() {
    let cases = cases();
    assert!(
        cases.len() >= 3,
        "expected the example fixtures at least, found {}",
        cases.len()
    );
    let mut compared = 0;
    let mut policies: Vec<(PathBuf, Config, Policy)> = Vec::new();
    for (config_path, name, fixture) in &cases {
        if !policies.iter().any(|(p, _, _)| p == config_path) {
            let config = Config::load(config_path).unwrap_or_else(|e| panic!("{e}"));
            let policy = Policy::compile(&config.policy).unwrap();
            assert_eq!(
                policy.evaluator(),
                Evaluator::Rvm,
                "{}: the RVM should run this policy: {:?}",
                config_path.display(),
                policy.rvm_unsupported()
            );
            policies.push((config_path.clone(), config, policy));
        }
        let (_, config, policy) = policies.iter().find(|(p, _, _)| p == config_path).unwrap();
        for (i, outcome) in testing::replay(config, policy, fixture)
            .into_iter()
            .enumerate()
        {
            let Ok(outcome) = outcome else { continue };
            // One input per action: a JSON-RPC batch is evaluated member by member.
            for e in &outcome.evaluations {
                let rvm = policy.evaluate(e.input.clone(), Evaluator::Rvm);
                let interpreter = policy.evaluate(e.input.clone(), Evaluator::Interpreter);
                assert_eq!(
                    rvm,
                    interpreter,
                    "{name} step {} ({}): evaluators disagree",
                    i + 1,
                    e.classification.action
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 10, "only {compared} inputs compared");
}
