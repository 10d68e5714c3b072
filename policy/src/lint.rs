//! Policies checked against the input they will see (`toolgate check`, `toolgate test`).
//!
//! A typo in a reference to `input` is silent in Rego: `input.action.nme == "x"` is never
//! true, and `not input.action.attributes.isue` is always true — a typo that fails open. Like
//! OPA's `--schema` check, this walks every module's references to `input` (directly, and
//! through variables bound to a part of it: `some e in input.chain`, `a := input.action`) and
//! reports, with file:line:col:
//!
//! - a path the input document never has ([`crate::schema::input`]);
//! - `input.action.attributes.X` that no action the reference can concern extracts — the
//!   catalogued actions, narrowed to those the same body names (`input.action.name == "…"`,
//!   `input.action.name in {…}`, `input.action.tool == "…"`); an MCP tool's actions take any
//!   attribute (their arguments), so a reference no body narrows is checked only when the
//!   catalog has no MCP tool;
//! - `input.action.name` compared with a name no action can have.
//!
//! What is not followed: references through functions' parameters, rules or `with`, and
//! `import input…` aliases.

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};

use regorus::unstable::{
    AssignOp, BoolOp, Expr, Literal, LiteralStmt, Module, Query, Rule, RuleHead, Span,
};
use regorus::{Engine, Value};
use serde::Serialize;

use crate::classify::Catalog;
use crate::config::PolicySource;
use crate::evaluate::PolicyError;
use crate::schema::{self, ActionInfo, Shape};

/// One reference that does not fit the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub file: String,
    pub line: u32,
    pub col: u32,
    /// The reference as written, e.g. `input.action.nme`.
    pub reference: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.col, self.reference, self.message
        )
    }
}

/// Check every module of `source` against the input and, when given, `catalog`'s actions
/// (without a catalog, or with one that has no tools, only the input's paths are checked).
pub fn lint(source: &PolicySource, catalog: Option<&Catalog>) -> Result<Vec<Finding>, PolicyError> {
    let mut engine = Engine::new();
    for (name, text) in &source.modules {
        engine
            .add_policy(name.clone(), text.clone())
            .map_err(|e| PolicyError(e.to_string()))?;
    }
    let checker = Checker {
        input: schema::input(),
        // A catalog without tools classifies everything as `unknown`: a policy written for
        // tools still to be catalogued is not checked against it.
        actions: catalog
            .filter(|c| !c.tools().is_empty())
            .map(schema::actions),
    };
    let mut findings = Vec::new();
    for module in engine.get_modules().iter() {
        checker.module(module, &mut findings);
    }
    findings.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    findings.dedup();
    Ok(findings)
}

struct Checker {
    input: Shape,
    /// `None`: no catalog to check attributes and action names against.
    actions: Option<Vec<ActionInfo>>,
}

/// One step of a reference.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    /// `[0]`
    Index,
    /// `[x]`, `[_]`, `[f(y)]`
    Dynamic,
}

/// What a body says about the action it applies to.
#[derive(Debug, Clone, Default)]
struct Narrowing {
    names: Option<BTreeSet<String>>,
    tools: Option<BTreeSet<String>>,
}

/// Variables bound to a part of the input, with the path they were read from.
type Bindings = HashMap<String, (Shape, String)>;

/// The context of an expression: its body's narrowing and bindings.
#[derive(Clone)]
struct Scope {
    narrowing: Narrowing,
    bindings: Bindings,
}

impl Checker {
    fn module(&self, module: &Module, out: &mut Vec<Finding>) {
        for rule in &module.policy {
            match rule.as_ref() {
                Rule::Default { value, args, .. } => {
                    let scope = Scope::empty();
                    for a in args {
                        self.expr(a, &scope, out);
                    }
                    self.expr(value, &scope, out);
                }
                Rule::Spec { head, bodies, .. } => {
                    let head_value = match head {
                        RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
                            assign.as_ref().map(|a| &a.value)
                        }
                        RuleHead::Set { key, .. } => key.as_ref(),
                    };
                    if bodies.is_empty() {
                        if let Some(v) = head_value {
                            self.expr(v, &Scope::empty(), out);
                        }
                    }
                    for (j, body) in bodies.iter().enumerate() {
                        let mut scope = Scope::empty();
                        scope.narrowing = narrowing(&body.query);
                        self.query(&body.query, &mut scope, out);
                        let value = body.assign.as_ref().map(|a| &a.value).or(if j == 0 {
                            head_value
                        } else {
                            None
                        });
                        if let Some(v) = value {
                            self.expr(v, &scope, out);
                        }
                    }
                }
            }
        }
    }

    fn query(&self, query: &Query, scope: &mut Scope, out: &mut Vec<Finding>) {
        for stmt in &query.stmts {
            self.stmt(stmt, scope, out);
        }
    }

    fn stmt(&self, stmt: &LiteralStmt, scope: &mut Scope, out: &mut Vec<Finding>) {
        for w in &stmt.with_mods {
            self.expr(&w.r#as, scope, out);
        }
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                self.expr(collection, scope, out);
                if let Some(shape) = self.shape_of(collection, scope) {
                    let (item, path) = shape;
                    if let (Shape::Array(item_shape), Some(name)) = (&item, var_name(value)) {
                        scope
                            .bindings
                            .insert(name, ((**item_shape).clone(), format!("{path}[_]")));
                    }
                    if let (Shape::Object(o), Some(name)) = (&item, var_name(value)) {
                        if let Some(rest) = &o.rest {
                            scope
                                .bindings
                                .insert(name, ((**rest).clone(), format!("{path}[_]")));
                        }
                    }
                }
                if let Some(k) = key {
                    self.expr(k, scope, out);
                }
            }
            Literal::Expr { expr, .. } => {
                self.expr(expr, scope, out);
                // `x := input.a.b` (or `x = …`): x is that part of the input from here on.
                if let Expr::AssignExpr { lhs, rhs, .. } = expr.as_ref() {
                    if let (Some(name), Some((shape, path))) =
                        (var_name(lhs), self.shape_of(rhs, scope))
                    {
                        scope.bindings.insert(name, (shape, path));
                    }
                }
            }
            Literal::NotExpr { expr, .. } => self.expr(expr, scope, out),
            Literal::Every { domain, query, .. } => {
                self.expr(domain, scope, out);
                let mut inner = scope.clone();
                self.query(query, &mut inner, out);
            }
        }
    }

    /// Walk `expr`, checking each reference chain once, as a whole.
    fn expr(&self, expr: &Expr, scope: &Scope, out: &mut Vec<Finding>) {
        match expr {
            Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                let (root, steps, indices) = chain(expr);
                for index in indices {
                    self.expr(index, scope, out);
                }
                self.reference(expr, root, &steps, scope, out);
                if !matches!(root, Expr::Var { .. }) {
                    self.expr(root, scope, out);
                }
            }
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
            | Expr::Var { .. } => {}
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for i in items {
                    self.expr(i, scope, out);
                }
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k, scope, out);
                    self.expr(v, scope, out);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                let mut inner = scope.clone();
                self.query(query, &mut inner, out);
                self.expr(term, &inner, out);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                let mut inner = scope.clone();
                self.query(query, &mut inner, out);
                self.expr(key, &inner, out);
                self.expr(value, &inner, out);
            }
            Expr::Call { fcn, params, .. } => {
                self.expr(fcn, scope, out);
                for p in params {
                    self.expr(p, scope, out);
                }
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr, scope, out),
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs, scope, out);
                self.expr(rhs, scope, out);
                self.compared_name(lhs, rhs, scope, out);
                self.compared_name(rhs, lhs, scope, out);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    self.expr(k, scope, out);
                }
                self.expr(value, scope, out);
                self.expr(collection, scope, out);
                if let Expr::Set { items, .. } | Expr::Array { items, .. } = collection.as_ref() {
                    for item in items {
                        self.compared_name(value, item, scope, out);
                    }
                }
            }
        }
    }

    /// The shape and written path of `expr` when it is the input or a part of it.
    fn shape_of(&self, expr: &Expr, scope: &Scope) -> Option<(Shape, String)> {
        let (root, steps, _) = chain(expr);
        let (mut shape, mut path) = self.root(root, scope)?;
        for step in &steps {
            shape = match (&shape, step) {
                (Shape::Object(o), Step::Key(k)) => match o.fields.iter().find(|f| f.name == k) {
                    Some(f) => f.shape.clone(),
                    None => (**o.rest.as_ref()?).clone(),
                },
                (Shape::Object(o), Step::Dynamic) => (**o.rest.as_ref()?).clone(),
                (Shape::Array(item), Step::Index | Step::Dynamic) => (**item).clone(),
                _ => return None,
            };
            path.push_str(&step_text(step));
        }
        Some((shape, path))
    }

    fn root(&self, root: &Expr, scope: &Scope) -> Option<(Shape, String)> {
        let name = var_name(root)?;
        if name == "input" {
            return Some((self.input.clone(), "input".into()));
        }
        scope.bindings.get(&name).cloned()
    }

    /// Check one reference chain `root.steps…` written at `expr`.
    fn reference(
        &self,
        expr: &Expr,
        root: &Expr,
        steps: &[Step],
        scope: &Scope,
        out: &mut Vec<Finding>,
    ) {
        let Some((mut shape, mut path)) = self.root(root, scope) else {
            return;
        };
        for step in steps {
            let next = match self.step(&shape, &path, step, scope) {
                Ok(Some(next)) => next,
                Ok(None) => return,
                Err(message) => {
                    out.push(finding(root.span(), &written(root, expr), message));
                    return;
                }
            };
            shape = next;
            path.push_str(&step_text(step));
        }
    }

    /// Where `step` leads from `shape` (at `path`): `Ok(None)` when nothing more can be said.
    fn step(
        &self,
        shape: &Shape,
        path: &str,
        step: &Step,
        scope: &Scope,
    ) -> Result<Option<Shape>, String> {
        match (shape, step) {
            (Shape::Any, _) => Ok(None),
            (Shape::Object(o), Step::Key(k)) => {
                if let Some(f) = o.fields.iter().find(|f| f.name == k) {
                    return Ok(Some(f.shape.clone()));
                }
                match &o.rest {
                    Some(rest) => Ok(Some((**rest).clone())),
                    None => Err(format!(
                        "{path} has no field {k:?} (it has {})",
                        o.fields
                            .iter()
                            .map(|f| f.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
            (Shape::Object(o), Step::Dynamic | Step::Index) => {
                Ok(o.rest.as_ref().map(|r| (**r).clone()))
            }
            (Shape::Array(item), Step::Index | Step::Dynamic) => Ok(Some((**item).clone())),
            (Shape::Array(_), Step::Key(k)) => Err(format!(
                "{path} is an array: its entries are {path}[_].{k}, {path}[i].{k}"
            )),
            (Shape::Either(options), _) => {
                let mut last = Err(String::new());
                for o in options {
                    match self.step(o, path, step, scope) {
                        Ok(next) => return Ok(next),
                        Err(e) => last = Err(e),
                    }
                }
                last
            }
            (Shape::Attributes, Step::Key(k)) => self.attribute(path, k, scope).map(|()| None),
            (Shape::Attributes, _) => Ok(None),
            (Shape::String | Shape::Integer | Shape::Boolean | Shape::Null, _) => Err(format!(
                "{path} is {}, with nothing inside",
                match shape {
                    Shape::String => "a string",
                    Shape::Integer => "a number",
                    Shape::Boolean => "a boolean",
                    _ => "null",
                }
            )),
        }
    }

    /// The actions a reference in `scope` can concern.
    fn candidates<'a>(&'a self, actions: &'a [ActionInfo], scope: &Scope) -> Vec<&'a ActionInfo> {
        actions
            .iter()
            .filter(|a| {
                let named = scope
                    .narrowing
                    .names
                    .as_ref()
                    .is_none_or(|names| names.iter().any(|n| a.is(n)));
                let tooled = scope
                    .narrowing
                    .tools
                    .as_ref()
                    .is_none_or(|tools| a.tool.as_ref().is_none_or(|t| tools.contains(t)));
                named && tooled
            })
            .collect()
    }

    fn attribute(&self, path: &str, key: &str, scope: &Scope) -> Result<(), String> {
        let Some(actions) = &self.actions else {
            return Ok(());
        };
        let candidates = self.candidates(actions, scope);
        if candidates.is_empty() || candidates.iter().any(|a| a.attributes.is_none()) {
            // Nothing to go by (a name no action has is reported on its own), or an MCP
            // action, whose attributes are the arguments the agent sends.
            return Ok(());
        }
        if candidates
            .iter()
            .any(|a| a.attributes.as_ref().is_some_and(|s| s.contains(key)))
        {
            return Ok(());
        }
        let known: BTreeSet<&str> = candidates
            .iter()
            .filter_map(|a| a.attributes.as_ref())
            .flatten()
            .map(String::as_str)
            .collect();
        let which = match &scope.narrowing.names {
            Some(names) => format!(
                "{} extracts",
                names.iter().cloned().collect::<Vec<_>>().join(" or ")
            ),
            None => "no catalogued action extracts".to_string(),
        };
        let which = if scope.narrowing.names.is_some() {
            format!("no attribute {key:?}: {which} {}", list(&known))
        } else {
            format!(
                "{which} an attribute {key:?} (the catalog's: {})",
                list(&known)
            )
        };
        Err(format!("{path}: {which}"))
    }

    /// `input.action.name` compared with `other`, a name no action can have.
    fn compared_name(&self, name: &Expr, other: &Expr, scope: &Scope, out: &mut Vec<Finding>) {
        let (Some(literal), Some(actions)) = (string_literal(other), &self.actions) else {
            return;
        };
        if !self.is_action_name(name, scope) || actions.iter().any(|a| a.is(&literal)) {
            return;
        }
        let mut known: Vec<String> = actions
            .iter()
            .map(|a| {
                if a.prefix {
                    format!("{}…", a.name)
                } else {
                    a.name.clone()
                }
            })
            .collect();
        known.sort();
        let at = other.span();
        out.push(finding(
            &Span {
                // A string literal's span starts after its quote.
                start: at.start.saturating_sub(1),
                ..at.clone()
            },
            &format!("{literal:?}"),
            format!(
                "no catalogued action is named {literal:?} (there are {})",
                known.join(", ")
            ),
        ));
    }

    fn is_action_name(&self, expr: &Expr, scope: &Scope) -> bool {
        self.shape_of(expr, scope)
            .is_some_and(|(_, path)| path == "input.action.name")
    }
}

impl Scope {
    fn empty() -> Scope {
        Scope {
            narrowing: Narrowing::default(),
            bindings: Bindings::new(),
        }
    }
}

fn list(names: &BTreeSet<&str>) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

fn finding(at: &Span, reference: &str, message: String) -> Finding {
    Finding {
        file: at.source.file().clone(),
        line: at.line,
        col: column(at),
        reference: reference.to_string(),
        message,
    }
}

/// `at`'s column in characters from 1, as editors count it (regorus counts a tab as four).
fn column(at: &Span) -> u32 {
    let text = at.source.contents();
    let start = usize::try_from(at.start).unwrap_or(usize::MAX);
    let Some(before) = text.get(..start) else {
        return at.col;
    };
    let line = before
        .rfind('\n')
        .map_or(before, |i| before.get(i + 1..).unwrap_or(""));
    u32::try_from(line.chars().count()).map_or(at.col, |c| c.saturating_add(1))
}

/// The reference from `root` to the end of `expr`, as written.
fn written(root: &Expr, expr: &Expr) -> String {
    let text = root.span().source.contents();
    let start = usize::try_from(root.span().start).unwrap_or(0);
    let end = match expr {
        // Up to the closing bracket (a string index's span stops before its quote).
        Expr::RefBrack { index, .. } => {
            let after = usize::try_from(index.span().end).unwrap_or(0);
            text.get(after..)
                .and_then(|rest| rest.find(']'))
                .map_or(after, |i| after + i + 1)
        }
        _ => usize::try_from(expr.span().end).unwrap_or(0),
    };
    text.get(start..end)
        .map_or_else(|| expr.span().text().to_string(), str::to_string)
}

fn step_text(step: &Step) -> String {
    match step {
        Step::Key(k) => format!(".{k}"),
        Step::Index => "[0]".to_string(),
        Step::Dynamic => "[_]".to_string(),
    }
}

fn var_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
        _ => None,
    }
}

fn string_literal(expr: &Expr) -> Option<String> {
    match expr {
        Expr::String { value, .. } | Expr::RawString { value, .. } => {
            value.as_string().ok().map(|s| s.to_string())
        }
        _ => None,
    }
}

/// A reference chain's root, its steps in order, and the expressions used as indices.
fn chain(expr: &Expr) -> (&Expr, Vec<Step>, Vec<&Expr>) {
    let mut steps = Vec::new();
    let mut indices = Vec::new();
    let mut at = expr;
    loop {
        match at {
            Expr::RefDot { refr, field, .. } => {
                steps.push(match &field.1 {
                    Value::String(s) => Step::Key(s.to_string()),
                    _ => Step::Dynamic,
                });
                at = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                steps.push(match index.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => value
                        .as_string()
                        .map(|s| Step::Key(s.to_string()))
                        .unwrap_or(Step::Dynamic),
                    Expr::Number { .. } => Step::Index,
                    other => {
                        indices.push(other);
                        Step::Dynamic
                    }
                });
                at = refr;
            }
            _ => break,
        }
    }
    steps.reverse();
    (at, steps, indices)
}

/// The actions a body's own statements restrict it to.
fn narrowing(query: &Query) -> Narrowing {
    let mut n = Narrowing::default();
    for stmt in &query.stmts {
        let Literal::Expr { expr, .. } = &stmt.literal else {
            continue;
        };
        let (field, values) = match expr.as_ref() {
            Expr::BoolExpr {
                op: BoolOp::Eq,
                lhs,
                rhs,
                ..
            }
            | Expr::AssignExpr {
                op: AssignOp::Eq,
                lhs,
                rhs,
                ..
            } => match (action_field(lhs), action_field(rhs)) {
                (Some(f), None) => (f, string_literal(rhs).into_iter().collect()),
                (None, Some(f)) => (f, string_literal(lhs).into_iter().collect()),
                _ => continue,
            },
            Expr::Membership {
                key: None,
                value,
                collection,
                ..
            } => match (action_field(value), collection.as_ref()) {
                (Some(f), Expr::Set { items, .. } | Expr::Array { items, .. }) => {
                    let literals: Option<BTreeSet<String>> =
                        items.iter().map(|i| string_literal(i)).collect();
                    match literals {
                        Some(l) => (f, l),
                        None => continue,
                    }
                }
                _ => continue,
            },
            _ => continue,
        };
        if values.is_empty() {
            continue;
        }
        let slot = match field {
            "name" => &mut n.names,
            _ => &mut n.tools,
        };
        *slot = Some(match slot.take() {
            Some(before) => before.intersection(&values).cloned().collect(),
            None => values,
        });
    }
    n
}

/// `name` or `tool` when `expr` is `input.action.name` / `input.action.tool`.
fn action_field(expr: &Expr) -> Option<&'static str> {
    let (root, steps, _) = chain(expr);
    if var_name(root).as_deref() != Some("input") {
        return None;
    }
    match steps.as_slice() {
        [Step::Key(a), Step::Key(f)] if a == "action" && f == "name" => Some("name"),
        [Step::Key(a), Step::Key(f)] if a == "action" && f == "tool" => Some("tool"),
        _ => None,
    }
}
