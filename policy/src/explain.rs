//! Which rule produced a decision (`toolgate explain`).
//!
//! regorus 0.14.1 reports no rule locations for an evaluation (its `explanations` module has
//! the report types, not the capture), so the decision rule is instrumented instead: each body
//! of each definition of the query's rule gets a `print` marker as its last statement, the
//! copy is evaluated with the interpreter on the recorded input, and the markers printed are
//! the bodies that held. A complete rule's definitions are all evaluated; an `else` chain stops
//! at its first body that holds; no body holding means the `default`. Offline only: the proxy
//! never runs the instrumented copy.

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use regorus::unstable::{Expr, Module, Rule, RuleHead};
use regorus::{Engine, Value};
use serde::Serialize;

use crate::config::PolicySource;
use crate::evaluate::{PolicyError, LIB, LIB_NAME};

const MARKER: &str = "__toolgate_explain_";

/// A body or default of the decision rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    /// 1-based line where the rule, its `else` branch, or the default starts.
    pub line: u32,
    /// That line's text, trimmed.
    pub text: String,
    /// `rule`, `else` (a branch after the first of an `else` chain) or `default`.
    pub kind: &'static str,
}

/// What produced the decision for one input.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The query's value on the input, as the interpreter computed it.
    pub result: Value,
    /// The bodies that held (usually one); the default when none did; empty when the result
    /// is undefined.
    pub produced_by: Vec<Location>,
}

/// One instrumented body.
struct Body {
    location: Location,
    /// Unconditional (no statements): holds whenever it is reached.
    always: bool,
}

/// Explain `source`'s decision on `input` (see the module documentation).
pub fn explain(
    source: &PolicySource,
    input: &serde_json::Value,
) -> Result<Explanation, PolicyError> {
    let mut parsed = Engine::new();
    for (name, text) in &source.modules {
        parsed
            .add_policy(name.clone(), text.clone())
            .map_err(|e| PolicyError(e.to_string()))?;
    }
    let modules: Vec<_> = parsed.get_modules().clone();
    let mut bodies: Vec<Body> = Vec::new();
    let mut defaults: Vec<Location> = Vec::new();
    let mut chains: Vec<Vec<usize>> = Vec::new();
    let mut instrumented = Vec::new();
    for ((name, text), module) in source.modules.iter().zip(modules.iter()) {
        let mut inserts: Vec<(usize, String)> = Vec::new();
        for rule in &module.policy {
            match rule.as_ref() {
                Rule::Default { span, refr, .. } if is_query(module, refr, &source.query) => {
                    defaults.push(location(name, text, span.line, "default"));
                }
                Rule::Spec {
                    span,
                    head,
                    bodies: rule_bodies,
                } => {
                    let RuleHead::Compr { refr, .. } = head else {
                        continue;
                    };
                    if !is_query(module, refr, &source.query) {
                        continue;
                    }
                    let mut chain = Vec::new();
                    if rule_bodies.is_empty() {
                        chain.push(bodies.len());
                        bodies.push(Body {
                            location: location(name, text, span.line, "rule"),
                            always: true,
                        });
                    }
                    for (j, body) in rule_bodies.iter().enumerate() {
                        let line = if j == 0 { span.line } else { body.span.line };
                        let kind = if body.is_else { "else" } else { "rule" };
                        let id = bodies.len();
                        chain.push(id);
                        let stmts = &body.query.stmts;
                        let (Some(first), Some(last)) = (stmts.first(), stmts.last()) else {
                            bodies.push(Body {
                                location: location(name, text, line, kind),
                                always: true,
                            });
                            continue;
                        };
                        let marker = format!("\nprint(\"{MARKER}{id}\")\n");
                        let start = offset(first.span.start);
                        let end = last
                            .with_mods
                            .iter()
                            .map(|w| w.r#as.span().end)
                            .chain(std::iter::once(last.span.end))
                            .map(|e| end_of(text, offset(e)))
                            .max()
                            .unwrap_or(start);
                        let braced = text
                            .get(offset(body.query.span.start)..start)
                            .is_some_and(|gap| gap.contains('{'));
                        if braced {
                            inserts.push((end, marker));
                        } else {
                            inserts.push((start, "{ ".to_string()));
                            inserts.push((end, format!("{marker}}}")));
                        }
                        bodies.push(Body {
                            location: location(name, text, line, kind),
                            always: false,
                        });
                    }
                    chains.push(chain);
                }
                _ => {}
            }
        }
        instrumented.push((name.clone(), insert(text, inserts)));
    }

    let mut engine = Engine::new();
    engine
        .add_data(Value::from(source.data.clone()))
        .map_err(|e| PolicyError(format!("policy data: {e}")))?;
    let lib = (LIB_NAME.to_string(), LIB.to_string());
    for (name, text) in instrumented.iter().chain(std::iter::once(&lib)) {
        engine
            .add_policy(name.clone(), text.clone())
            .map_err(|e| PolicyError(format!("instrumenting {name}: {e}")))?;
    }
    engine.set_strict_builtin_errors(false);
    engine.set_gather_prints(true);
    engine.set_input(Value::from(input.clone()));
    let result = engine
        .eval_rule(source.query.clone())
        .map_err(|e| PolicyError(e.to_string()))?;
    let printed: BTreeSet<usize> = engine
        .take_prints()
        .map_err(|e| PolicyError(e.to_string()))?
        .iter()
        .filter_map(|p| p.rsplit_once(MARKER)?.1.trim().parse().ok())
        .collect();
    let mut produced_by = Vec::new();
    if result != Value::Undefined {
        for chain in &chains {
            // An `else` chain stops at its first body that holds: a printed marker, or an
            // unconditional body reached because none before it held.
            let held = chain
                .iter()
                .find(|id| printed.contains(id) || bodies.get(**id).is_some_and(|b| b.always));
            if let Some(body) = held.and_then(|id| bodies.get(*id)) {
                produced_by.push(body.location.clone());
            }
        }
        if produced_by.is_empty() {
            produced_by = defaults;
        }
    }
    Ok(Explanation {
        result,
        produced_by,
    })
}

/// The end of an expression whose span ends at `end`: a string literal's span stops before its
/// closing quote.
fn end_of(text: &str, end: usize) -> usize {
    match text.as_bytes().get(end) {
        Some(b'"' | b'`') => end + 1,
        _ => end,
    }
}

fn offset(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `text` with each `(offset, insertion)` applied (offsets into the original text).
fn insert(text: &str, mut inserts: Vec<(usize, String)>) -> String {
    inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let mut out = text.to_string();
    for (at, what) in inserts {
        if out.is_char_boundary(at) && at <= out.len() {
            out.insert_str(at, &what);
        }
    }
    out
}

fn location(file: &str, text: &str, line: u32, kind: &'static str) -> Location {
    let index = usize::try_from(line).unwrap_or(0).saturating_sub(1);
    Location {
        file: file.to_string(),
        line,
        text: text
            .lines()
            .nth(index)
            .unwrap_or_default()
            .trim()
            .to_string(),
        kind,
    }
}

/// Whether the rule named by `refr` in `module` is the one `query` names.
fn is_query(module: &Module, refr: &Expr, query: &str) -> bool {
    let package = module.package.refr.span().text();
    let head = refr.span().text();
    query == format!("data.{package}.{head}")
}
