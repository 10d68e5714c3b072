//! `toolgate test`: Rego `test_*` rules (as `opa test` runs them) and YAML request fixtures —
//! requests in order within one task, each with the action and decision it must get. Fixtures
//! run through the offline pipeline with a real chain ledger, so chain rules are exercised.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::chain::{Ledger, Outcome, TaskKey};
use crate::config::Config;
use crate::evaluate::Policy;
use crate::offline::{self, Request};

/// One fixture file: a task's requests in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// Why this fixture exists.
    pub note: Option<String>,
    /// The task the steps run in (default `test`).
    pub task: Option<String>,
    pub steps: Vec<Step>,
}

/// A golden case: one request against a configuration, and what it must yield.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub note: String,
    /// Repository-relative configuration (default `examples/quickstart/toolgate.yaml`).
    pub config: Option<String>,
    pub task: Option<String>,
    pub request: Request,
    pub want: Want,
}

impl Golden {
    /// The configuration a case runs against when it names none.
    pub const DEFAULT_CONFIG: &'static str = "examples/quickstart/toolgate.yaml";

    /// This case as a one-step fixture.
    pub fn into_fixture(self) -> Fixture {
        Fixture {
            note: Some(self.note),
            task: self.task,
            steps: vec![Step {
                note: None,
                task: None,
                request: self.request,
                status: None,
                outcome: None,
                approval: None,
                want: self.want,
            }],
        }
    }
}

/// One request and what it must yield.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub note: Option<String>,
    /// The task this step runs in, when it is not the fixture's (the agent switching task).
    pub task: Option<String>,
    pub request: Request,
    /// The tool's response status recorded in the chain (default 200 if forwarded, else 403).
    pub status: Option<u16>,
    /// How the action ended, as later steps see it in `input.chain`: `response` (the
    /// default, with `status`), `pending` (still in flight), `agent_disconnected`,
    /// `upstream_error` or `timeout`.
    pub outcome: Option<StepOutcome>,
    /// The request is the retry of one a human approved: policy sees `input.approval`.
    pub approval: Option<Approved>,
    pub want: Want,
}

/// A human's approval a fixture step is retried with (`input.approval`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approved {
    pub approved_by: String,
    pub comment: Option<String>,
    /// Default `fixture`.
    pub id: Option<String>,
    /// Default `2026-01-01T00:00:00Z`.
    pub approved_at: Option<String>,
}

impl Approved {
    fn granted(&self) -> crate::approval::Granted {
        crate::approval::Granted {
            id: self.id.clone().unwrap_or_else(|| "fixture".into()),
            approved_by: self.approved_by.clone(),
            approved_at: self
                .approved_at
                .clone()
                .unwrap_or_else(|| "2026-01-01T00:00:00Z".into()),
            comment: self.comment.clone(),
        }
    }
}

/// How a fixture step's action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Response,
    Pending,
    AgentDisconnected,
    UpstreamError,
    Timeout,
}

/// The expected outcome of a request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Want {
    pub action: Option<String>,
    /// Attributes that must be present with these values (others may exist).
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
    /// `allow`, `deny`, `error`, `approval` (held for a human: the decision asks for
    /// approval) or `reject` (refused before policy, with 400 or 413).
    pub decision: String,
    pub reason: Option<String>,
    /// For a JSON-RPC batch: what each member must get, in order.
    #[serde(default)]
    pub members: Vec<Want>,
}

/// The result of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    /// `None` when it passed; otherwise what was wrong.
    pub failure: Option<String>,
}

/// A test run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("Rego tests: {0}")]
    Rego(String),
}

/// The outcome of `want` against what happened: `None` when it matches.
pub fn check(want: &Want, got: &Result<offline::Outcome, String>) -> Option<String> {
    let outcome = match got {
        Err(refused) if want.decision == "reject" => {
            return want
                .reason
                .as_ref()
                .filter(|r| *r != refused)
                .map(|r| format!("reason {refused:?}, want {r:?}"));
        }
        Err(refused) => {
            return Some(format!(
                "rejected before policy ({refused}), want {}",
                want.decision
            ))
        }
        Ok(o) => o,
    };
    let Some(decisive) = outcome.decisive() else {
        return Some("no evaluation".to_string());
    };
    let mut problems = evaluation(want, decisive);
    if !want.members.is_empty() {
        if want.members.len() != outcome.evaluations.len() {
            problems.push(format!(
                "{} members evaluated, want {}",
                outcome.evaluations.len(),
                want.members.len()
            ));
        }
        for (i, (w, e)) in want.members.iter().zip(&outcome.evaluations).enumerate() {
            problems.extend(
                evaluation(w, e)
                    .into_iter()
                    .map(|p| format!("member {}: {p}", i + 1)),
            );
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn evaluation(want: &Want, got: &offline::Evaluation) -> Vec<String> {
    let class = &got.classification;
    let mut problems = Vec::new();
    if let Some(a) = &want.action {
        if **a != *class.action {
            problems.push(format!("action {}, want {a}", class.action));
        }
    }
    for (k, v) in &want.attributes {
        let found = class
            .attributes
            .iter()
            .find(|(n, _)| **n == **k)
            .map(|(_, v)| v);
        if found != Some(v) {
            problems.push(format!("attribute {k} = {found:?}, want {v}"));
        }
    }
    let effect = got.decision.outcome();
    if effect != want.decision {
        problems.push(format!(
            "decision {effect} ({:?}), want {}",
            got.decision.reason, want.decision
        ));
    }
    if let Some(r) = &want.reason {
        if *r != got.decision.reason {
            problems.push(format!("reason {:?}, want {r:?}", got.decision.reason));
        }
    }
    problems
}

/// Replay the steps of `fixture` in order, as the proxy would see them: each step's outcome
/// (or refusal), with the chain of earlier steps in its input.
pub fn replay(
    config: &Config,
    policy: &Policy,
    fixture: &Fixture,
) -> Vec<Result<offline::Outcome, String>> {
    let ledger = Ledger::new(&config.chain);
    let fixture_task = fixture.task.as_deref().unwrap_or("test");
    let mut outcomes = Vec::new();
    for step in &fixture.steps {
        let task = step.task.as_deref().unwrap_or(fixture_task);
        let prepared = step
            .request
            .header_map()
            .and_then(|h| step.request.body_bytes().map(|b| (h, b)));
        let (headers, body) = match prepared {
            Ok(found) => found,
            Err(e) => {
                outcomes.push(Err(e.to_string()));
                continue;
            }
        };
        let granted = step.approval.as_ref().map(Approved::granted);
        let got = offline::decide(
            config,
            policy,
            &step.request,
            &headers,
            body.as_deref(),
            task,
            &ledger,
            granted.as_ref(),
        );
        if let Ok(o) = &got {
            // A refused batch reaches the tool with none of its members: all get 403.
            let outcome = match step.outcome.unwrap_or(StepOutcome::Response) {
                StepOutcome::Pending => None,
                StepOutcome::AgentDisconnected => Some(Outcome::AgentDisconnected),
                StepOutcome::UpstreamError => Some(Outcome::UpstreamError),
                StepOutcome::Timeout => Some(Outcome::Timeout),
                StepOutcome::Response if o.forwarded() => {
                    Some(Outcome::Response(step.status.unwrap_or(200)))
                }
                StepOutcome::Response => Some(Outcome::Refused(step.status.unwrap_or(403))),
            };
            for e in outcome
                .iter()
                .flat_map(|out| o.evaluations.iter().map(move |e| (e, *out)))
            {
                ledger.settle(&TaskKey::named(task), e.0.seq, e.1);
            }
        }
        outcomes.push(got.map_err(|refused| refused.to_string()));
    }
    outcomes
}

/// Run the steps of `fixture` in order against `config` and `policy`.
pub fn run_fixture(config: &Config, policy: &Policy, name: &str, fixture: &Fixture) -> Vec<Case> {
    replay(config, policy, fixture)
        .into_iter()
        .zip(&fixture.steps)
        .enumerate()
        .map(|(i, (got, step))| {
            let name = match &step.note {
                Some(n) => format!("{name} step {} ({n})", i + 1),
                None => format!("{name} step {}", i + 1),
            };
            Case {
                name,
                failure: check(&step.want, &got),
            }
        })
        .collect()
}

/// Every `.yaml`/`.yml` and `.rego` file under `paths` (files or directories), sorted.
pub fn discover(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>), TestError> {
    let mut yaml = Vec::new();
    let mut rego = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            let entries = std::fs::read_dir(&p).map_err(|e| TestError::File {
                path: p.clone(),
                message: e.to_string(),
            })?;
            for entry in entries.flatten() {
                stack.push(entry.path());
            }
        } else {
            match p.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => yaml.push(p),
                Some("rego") => rego.push(p),
                _ if paths.contains(&p) => {
                    return Err(TestError::File {
                        path: p,
                        message: "expected a .yaml fixture or a .rego test file".into(),
                    })
                }
                _ => {}
            }
        }
    }
    yaml.sort();
    rego.sort();
    Ok((yaml, rego))
}

/// Load a fixture file.
pub fn load_fixture(path: &Path) -> Result<Fixture, TestError> {
    let text = std::fs::read_to_string(path).map_err(|e| TestError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_yaml::from_str(&text).map_err(|e| TestError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Run every `test_*` rule of the config's modules plus `extra` Rego files; each must be true.
pub fn run_rego_tests(config: &Config, extra: &[PathBuf]) -> Result<Vec<Case>, TestError> {
    let mut engine = regorus::Engine::new();
    engine
        .add_data(regorus::Value::from(config.policy.data.clone()))
        .map_err(|e| TestError::Rego(e.to_string()))?;
    // The helper library is loaded beside the policy, as in the proxy (its own tests too).
    engine
        .add_policy(
            crate::evaluate::LIB_NAME.to_string(),
            crate::evaluate::LIB.to_string(),
        )
        .map_err(|e| TestError::Rego(e.to_string()))?;
    let mut modules: Vec<(String, String)> = config.policy.modules.clone();
    for path in extra {
        let text = std::fs::read_to_string(path).map_err(|e| TestError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // A test file that is also a config module is loaded once.
        if !modules.iter().any(|(_, t)| *t == text) {
            modules.push((path.display().to_string(), text));
        }
    }
    let mut tests = Vec::new();
    for (name, text) in &modules {
        let package = engine
            .add_policy(name.clone(), text.clone())
            .map_err(|e| TestError::Rego(e.to_string()))?;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("test_") else {
                continue;
            };
            let rule: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let path = format!("{package}.test_{rule}");
            if !tests.contains(&path) {
                tests.push(path);
            }
        }
    }
    Ok(tests
        .into_iter()
        .map(|rule| {
            let failure = match engine.eval_rule(rule.clone()) {
                Ok(regorus::Value::Bool(true)) => None,
                Ok(regorus::Value::Undefined) => Some("undefined (a condition failed)".to_string()),
                Ok(other) => Some(format!("evaluated to {other}, want true")),
                Err(e) => Some(format!("error: {e}")),
            };
            Case {
                name: rule,
                failure,
            }
        })
        .collect())
}
