//! The policy input document's shape (DESIGN.md §5 and what toolgate adds), in one place:
//! `toolgate schema` prints it as a JSON Schema with the catalog's actions and their
//! attributes, and the policy check (`lint`) reports every reference to an input path it never
//! has. A field added to the input (`evaluate/input.rs`) is added here too; a test builds an
//! input and requires every path in it to be here.

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use serde_json::{json, Map, Value as Json};

use crate::classify::{AttributeSource, Catalog, Protocol, CONNECT_SUFFIX, UNKNOWN};
use crate::delegation;

/// What a value in the input may be.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Object(Object),
    Array(Box<Shape>),
    String,
    Integer,
    Boolean,
    Null,
    /// Any JSON value (a body, a claim, an attribute's value).
    Any,
    /// One of several (a query value: a string or a list of them; a tool: a string or null).
    Either(Vec<Shape>),
    /// `input.action.attributes`: the keys the action's catalog entry extracts.
    Attributes,
}

/// An object's known fields, and what any other key holds (`None`: no other key exists).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub fields: Vec<Field>,
    pub rest: Option<Box<Shape>>,
}

/// One field of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: &'static str,
    pub shape: Shape,
    /// Present in every input (else only sometimes, as its description says).
    pub required: bool,
    pub description: &'static str,
}

fn field(name: &'static str, shape: Shape, description: &'static str) -> Field {
    Field {
        name,
        shape,
        required: true,
        description,
    }
}

fn optional(name: &'static str, shape: Shape, description: &'static str) -> Field {
    Field {
        required: false,
        ..field(name, shape, description)
    }
}

fn object(fields: Vec<Field>) -> Shape {
    Shape::Object(Object { fields, rest: None })
}

/// An object whose keys are not known in advance, each holding `value`.
fn map(value: Shape) -> Shape {
    Shape::Object(Object {
        fields: Vec::new(),
        rest: Some(Box::new(value)),
    })
}

/// An object with some known fields and any others.
fn open(fields: Vec<Field>) -> Shape {
    Shape::Object(Object {
        fields,
        rest: Some(Box::new(Shape::Any)),
    })
}

fn string_or_null() -> Shape {
    Shape::Either(vec![Shape::String, Shape::Null])
}

fn labels() -> Shape {
    map(object(vec![
        field("by", Shape::String, "the action that set the label"),
        field("at", Shape::String, "when (RFC 3339)"),
    ]))
}

/// One entry of `input.chain`.
pub fn chain_entry() -> Shape {
    object(vec![
        field(
            "seq",
            Shape::Integer,
            "the action's place in its task, from 1",
        ),
        field("action", Shape::String, "the action's name"),
        field(
            "tool",
            string_or_null(),
            "its tool; null for an uncatalogued host",
        ),
        field("agent", Shape::String, "the agent that took it"),
        field("decision", Shape::String, "allow, deny or error"),
        field("pending", Shape::Boolean, "true while in flight"),
        optional(
            "outcome",
            Shape::String,
            "once settled: response, refused, agent_disconnected, upstream_error or timeout",
        ),
        optional(
            "status",
            Shape::Integer,
            "the tool's status (response) or toolgate's (refused)",
        ),
        field("attributes", map(Shape::Any), "its attributes"),
        field("at", Shape::String, "when it was decided (RFC 3339)"),
        optional(
            "dry_run",
            Shape::Boolean,
            "a would-deny forwarded in dry-run mode",
        ),
    ])
}

/// The whole input document.
pub fn input() -> Shape {
    object(vec![
        field(
            "agent",
            object(vec![
                field("id", Shape::String, "the agent's identity"),
                field(
                    "claims",
                    map(Shape::Any),
                    "the agent.id_file token's claims",
                ),
                field("labels", labels(), "labels set on the agent"),
            ]),
            "who is calling",
        ),
        field(
            "task",
            object(vec![
                field("id", Shape::String, "the task's id"),
                field(
                    "claims",
                    map(Shape::Any),
                    "the verified task token's claims",
                ),
                field(
                    "revoked",
                    Shape::Boolean,
                    "always false: revoked tasks never reach policy",
                ),
                field("verified", Shape::Boolean, "a task token named the task"),
                field("labels", labels(), "labels set on the task"),
                field(
                    "history_complete",
                    Shape::Boolean,
                    "nothing of the task's history was cut",
                ),
                optional(
                    "delegation",
                    open(Vec::new()),
                    "for a task delegated by another agent's toolgate",
                ),
            ]),
            "the task the action belongs to",
        ),
        field(
            "action",
            object(vec![
                field(
                    "name",
                    Shape::String,
                    "the action, e.g. ticket.read; unknown if none matched",
                ),
                field(
                    "tool",
                    string_or_null(),
                    "the tool; null for an uncatalogued host",
                ),
                field(
                    "attributes",
                    Shape::Attributes,
                    "what the catalog extracts from the request",
                ),
                optional(
                    "definition",
                    open(vec![
                        optional("pinned", Shape::Boolean, "the definition matches the pin"),
                        optional("changed", Shape::Boolean, "the definition changed"),
                        optional("digest", Shape::String, "the definition's digest"),
                    ]),
                    "an MCP tool's definition, as pinned",
                ),
            ]),
            "what the request does",
        ),
        field(
            "request",
            object(vec![
                field("method", Shape::String, "upper case"),
                field("scheme", Shape::String, "http or https"),
                field("host", Shape::String, "as requested, lower case"),
                field("port", Shape::Integer, "as requested"),
                field("path", Shape::String, "normalised"),
                field(
                    "query",
                    map(Shape::Either(vec![
                        Shape::String,
                        Shape::Array(Box::new(Shape::String)),
                    ])),
                    "a parameter given once is a string, several times a list",
                ),
                field(
                    "headers",
                    map(Shape::String),
                    "lower-case names; never a credential-bearing header",
                ),
                field(
                    "body",
                    Shape::Any,
                    "the parsed body where one was read, else null",
                ),
            ]),
            "the request as normalised",
        ),
        field(
            "chain",
            Shape::Array(Box::new(chain_entry())),
            "the task's earlier actions, oldest first",
        ),
        field("now", Shape::String, "when the decision is made (RFC 3339)"),
        optional(
            "approval",
            object(vec![
                field("id", Shape::String, "the approval"),
                field("approved_by", Shape::String, "who approved it"),
                field("approved_at", Shape::String, "when (RFC 3339)"),
                field("comment", string_or_null(), "the approver's comment"),
            ]),
            "only on the retry of a request a human approved",
        ),
        optional(
            "listing",
            Shape::Boolean,
            "true when an MCP tools/list is filtered",
        ),
        optional(
            "state",
            open(vec![optional(
                "degraded",
                Shape::Boolean,
                "decided on a local view while shared state is unavailable",
            )]),
            "how shared state was read",
        ),
    ])
}

/// What the catalog says about one action's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionInfo {
    pub name: String,
    /// Its tool; `None` for `unknown` (any tool or none).
    pub tool: Option<String>,
    /// The attributes it extracts, or `None` when any may appear (an MCP tool's calls: the
    /// arguments the agent sends).
    pub attributes: Option<BTreeSet<String>>,
    /// For an MCP tool: every action named `<tool>.…` is this tool's.
    pub prefix: bool,
}

/// Every action the catalog can classify a request as: each catalogued action, `<tool>.…` for
/// an MCP tool, `<tool>.connect` for a tool not intercepted, `unknown`, and toolgate's own
/// `task.delegate` (a policy may decide it whether or not this configuration delegates).
pub fn actions(catalog: &Catalog) -> Vec<ActionInfo> {
    let mut out = Vec::new();
    for tool in catalog.tools() {
        let name = tool.name.to_string();
        if tool.protocol == Protocol::Mcp {
            out.push(ActionInfo {
                name: format!("{name}."),
                tool: Some(name.clone()),
                attributes: None,
                prefix: true,
            });
        }
        for action in tool.actions() {
            out.push(ActionInfo {
                name: action.name.to_string(),
                tool: Some(name.clone()),
                attributes: Some(
                    action
                        .attributes
                        .iter()
                        .map(|(k, _)| k.to_string())
                        .collect(),
                ),
                prefix: false,
            });
        }
        if !tool.intercept {
            out.push(ActionInfo {
                name: format!("{name}.{CONNECT_SUFFIX}"),
                tool: Some(name.clone()),
                attributes: Some(BTreeSet::new()),
                prefix: false,
            });
        }
    }
    out.push(ActionInfo {
        name: delegation::ACTION.to_string(),
        tool: None,
        attributes: Some(DELEGATE_ATTRIBUTES.iter().map(|a| a.to_string()).collect()),
        prefix: false,
    });
    out.push(ActionInfo {
        name: UNKNOWN.to_string(),
        tool: None,
        attributes: Some(BTreeSet::new()),
        prefix: false,
    });
    out
}

/// The attributes of `task.delegate` (a delegation request, decided like any action).
const DELEGATE_ATTRIBUTES: [&str; 5] = ["to", "actions", "scopes", "ttl", "depth"];

impl ActionInfo {
    /// Whether a request classified as `name` is this action.
    pub fn is(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.name)
        } else {
            self.name == name
        }
    }
}

/// The input's JSON Schema (draft-07, as OPA's `--schema` reads it), with `input.action` one
/// of the catalog's actions and its attributes.
pub fn json_schema(catalog: &Catalog) -> Json {
    let mut schema = to_json(&input(), catalog);
    if let Some(map) = schema.as_object_mut() {
        map.insert(
            "$schema".into(),
            json!("http://json-schema.org/draft-07/schema#"),
        );
        map.insert("title".into(), json!("toolgate policy input"));
        map.insert(
            "description".into(),
            json!("The document policy sees as `input` (toolgate README, \"Policy input and decision\")."),
        );
    }
    schema
}

fn to_json(shape: &Shape, catalog: &Catalog) -> Json {
    match shape {
        Shape::Object(o) => {
            let mut properties = Map::new();
            let mut required = Vec::new();
            for f in &o.fields {
                let mut s = if f.name == "action" && matches!(f.shape, Shape::Object(_)) {
                    action_schema(catalog)
                } else {
                    to_json(&f.shape, catalog)
                };
                if let Some(m) = s.as_object_mut() {
                    m.insert("description".into(), json!(f.description));
                }
                properties.insert(f.name.to_string(), s);
                if f.required {
                    required.push(json!(f.name));
                }
            }
            let mut out = json!({ "type": "object", "properties": properties });
            if let Some(m) = out.as_object_mut() {
                if !required.is_empty() {
                    m.insert("required".into(), Json::Array(required));
                }
                m.insert(
                    "additionalProperties".into(),
                    match &o.rest {
                        None => json!(false),
                        Some(rest) if **rest == Shape::Any => json!(true),
                        Some(rest) => to_json(rest, catalog),
                    },
                );
            }
            out
        }
        Shape::Array(item) => json!({ "type": "array", "items": to_json(item, catalog) }),
        Shape::String => json!({ "type": "string" }),
        Shape::Integer => json!({ "type": "integer" }),
        Shape::Boolean => json!({ "type": "boolean" }),
        Shape::Null => json!({ "type": "null" }),
        Shape::Any => json!({}),
        Shape::Either(options) => {
            json!({ "anyOf": options.iter().map(|o| to_json(o, catalog)).collect::<Vec<_>>() })
        }
        Shape::Attributes => json!({ "type": "object" }),
    }
}

/// `input.action`: any of the catalog's actions, each with its own attributes.
fn action_schema(catalog: &Catalog) -> Json {
    let mut options = Vec::new();
    for tool in catalog.tools() {
        let tool_name = json!({ "enum": [&*tool.name] });
        if tool.protocol == Protocol::Mcp {
            options.push(json!({
                "type": "object",
                "description": format!("a JSON-RPC message to MCP tool {}: tools/call is {}.<name> with its arguments, other methods {}.mcp.<method>", tool.name, tool.name, tool.name),
                "properties": {
                    "name": { "type": "string", "pattern": format!("^{}\\.", regex_escape(&tool.name)) },
                    "tool": tool_name,
                    "attributes": { "type": "object" },
                },
                "required": ["name", "tool", "attributes"],
            }));
        }
        for action in tool.actions() {
            let mut attributes = Map::new();
            for (name, source) in &action.attributes {
                let value = match source {
                    AttributeSource::Body(_) => json!({}),
                    AttributeSource::Path(_)
                    | AttributeSource::Query(_)
                    | AttributeSource::Header(_) => json!({ "type": "string" }),
                };
                attributes.insert(name.to_string(), value);
            }
            options.push(json!({
                "type": "object",
                "properties": {
                    "name": { "enum": [&*action.name] },
                    "tool": tool_name,
                    "attributes": { "type": "object", "properties": attributes, "additionalProperties": false },
                },
                "required": ["name", "tool", "attributes"],
            }));
        }
        if !tool.intercept {
            options.push(json!({
                "type": "object",
                "properties": {
                    "name": { "enum": [format!("{}.{CONNECT_SUFFIX}", tool.name)] },
                    "tool": tool_name,
                    "attributes": { "type": "object", "additionalProperties": false },
                },
                "required": ["name", "tool", "attributes"],
            }));
        }
    }
    options.push(json!({
        "type": "object",
        "description": "a request to hand part of the task to another agent (POST http://toolgate.internal/delegate)",
        "properties": {
            "name": { "enum": [delegation::ACTION] },
            "tool": { "type": "null" },
            "attributes": {
                "type": "object",
                "properties": {
                    "to": { "type": "string" },
                    "actions": { "type": "array", "items": { "type": "string" } },
                    "scopes": { "type": "array", "items": { "type": "string" } },
                    "ttl": { "type": "integer" },
                    "depth": { "type": "integer" },
                },
                "additionalProperties": false,
            },
        },
        "required": ["name", "tool", "attributes"],
    }));
    options.push(json!({
        "type": "object",
        "description": "no catalogued action matched (tool null: no tool serves the host)",
        "properties": {
            "name": { "enum": [UNKNOWN] },
            "tool": { "type": ["string", "null"] },
            "attributes": { "type": "object", "additionalProperties": false },
        },
        "required": ["name", "tool", "attributes"],
    }));
    json!({ "anyOf": options })
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}
