//! Classification: the tool catalog maps a normalised request to one action with attributes.
//!
//! The catalog is compiled once from config. Hosts are a hash lookup, methods a hash lookup,
//! paths a trie walk, so cost stays flat as the catalog grows. No match is action `unknown`.

mod body;
pub mod mcp;
mod template;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use serde_json::Value as Json;

pub use body::{
    BodyRule, CaseVariant, Expect, JsonPointer, PointerError, Scalar, MAX_POINTER_TOKENS,
};
pub use template::{PathTemplate, Segment, TemplateError, Trie, MAX_SEGMENTS};

use crate::normalise::{clip, names, Normalised};

/// Name of the action for requests no catalog entry matches.
pub const UNKNOWN: &str = "unknown";

/// Suffix of the action a non-intercepted CONNECT to a tool becomes (`<tool>.connect`).
pub const CONNECT_SUFFIX: &str = "connect";

/// The compiled tool catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    tools: Vec<Tool>,
    hosts: HashMap<Box<str>, Vec<(Option<u16>, usize)>>,
    /// `*.example.com` patterns as (".example.com", port, tool).
    wildcards: Vec<(Box<str>, Option<u16>, usize)>,
}

/// A tool: a set of hosts and the actions its API offers.
#[derive(Debug)]
pub struct Tool {
    pub name: Arc<str>,
    pub hosts: Vec<String>,
    pub upstream: Option<Upstream>,
    /// Credential used for allowed actions unless the decision names another.
    pub credential: Option<String>,
    /// Whether CONNECT tunnels to this tool are TLS-intercepted (`false`: host-only decision,
    /// bytes spliced).
    pub intercept: bool,
    pub protocol: Protocol,
    /// Labels every action of this tool sets on its task and agent.
    pub labels: Vec<Arc<str>>,
    /// Whether method- and URL-override headers and parameters may reach this tool.
    pub overrides: Overrides,
    actions: Vec<Action>,
    /// Labels per action name, for actions that set any.
    action_labels: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// Per action name, the protocols it may switch the connection to (`match.upgrade`).
    action_upgrades: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// Per method: that method's actions and the any-method ones, in precedence order.
    by_method: HashMap<Method, Trie>,
    /// Any-method actions, for methods no action names.
    any_method: Trie,
}

/// How a tool's requests are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// By method, path template and body rules of its actions.
    #[default]
    Http,
    /// As MCP over streamable HTTP: JSON-RPC methods (DESIGN.md §4).
    Mcp,
}

/// Whether a tool may receive requests that ask it to act on another method or URL
/// (`X-HTTP-Method-Override`, `X-Original-URL`, `_method=DELETE`, …): config `overrides`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overrides {
    /// Refused with 400 (the default): toolgate decides on the method and path it sees.
    #[default]
    Refuse,
    /// Forwarded: the tool relies on them, and its actions are written for what it does with
    /// them.
    Allow,
}

/// Where a tool's requests are sent when its config names an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Prefix prepended to forwarded paths ("" or "/base", never ending in '/').
    pub base_path: String,
}

/// One action a tool offers.
#[derive(Debug)]
pub struct Action {
    pub name: Arc<str>,
    pub method: Option<Method>,
    pub template: PathTemplate,
    /// `match.body`: every rule must hold on the parsed body.
    pub body: Vec<BodyRule>,
    pub attributes: Vec<(Arc<str>, AttributeSource)>,
    /// Labels this action sets on its task and agent when it is forwarded.
    pub labels: Vec<Arc<str>>,
    /// `match.upgrade`: the protocol (`websocket`) this action may switch the connection to;
    /// it then matches only requests asking for it.
    pub upgrade: Option<Arc<str>>,
}

/// The protocol a request asks to switch to (`Upgrade: websocket` → `websocket`, lower-case;
/// several offered: the first), if it asks.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::UPGRADE)?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    let name = first.split('/').next().unwrap_or(first).trim();
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

impl Action {
    /// Whether classifying or describing this action reads the request body.
    pub fn reads_body(&self) -> bool {
        !self.body.is_empty()
            || self
                .attributes
                .iter()
                .any(|(_, s)| matches!(s, AttributeSource::Body(_)))
    }
}

/// Where an attribute's value is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeSource {
    /// The n-th capture of the path template (decoded).
    Path(usize),
    /// A query parameter (decoded).
    Query(String),
    /// A request header.
    Header(HeaderName),
    /// A field of the JSON or form body (the JSON value as sent).
    Body(JsonPointer),
}

/// The result of classifying one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// Index of the tool in the catalog, if the request is for a known tool.
    pub tool: Option<usize>,
    pub action: Arc<str>,
    pub attributes: Vec<(Arc<str>, Json)>,
}

/// A request that matched an action but whose attributes cannot be read unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error(
        "query parameter {0:?} appears more than once; the action's attribute would be ambiguous"
    )]
    AmbiguousQuery(String),
    #[error("header {0:?} appears more than once; the action's attribute would be ambiguous")]
    AmbiguousHeader(String),
    #[error("header {0:?} is not valid UTF-8")]
    HeaderNotUtf8(String),
    #[error("query parameter {got:?} is read as {want:?} by some tools (case-insensitive binding, PHP's '.'/' ' as '_', Rails/PHP/qs brackets); the action's attribute {want:?} would be ambiguous")]
    QueryVariant { got: String, want: String },
    #[error("body key {key:?} differs only in case from the field {pointer} that the catalog reads; Go's encoding/json and ASP.NET would read it there")]
    CaseVariant { pointer: String, key: String },
}

impl From<CaseVariant> for ClassifyError {
    fn from(e: CaseVariant) -> ClassifyError {
        ClassifyError::CaseVariant {
            pointer: e.pointer,
            key: e.key,
        }
    }
}

impl Tool {
    /// The tool's actions, in config order.
    pub fn actions(&self) -> &[Action] {
        &self.actions
    }
}

impl Catalog {
    /// An empty catalog; tools are added with [`Catalog::push`].
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// Add a tool with its host patterns (lower-case, optionally `*.` and `:port`).
    pub fn push(&mut self, tool: ToolSpec) -> usize {
        let id = self.tools.len();
        for host in &tool.hosts {
            let (name, port) = split_host_port(host);
            match name.strip_prefix('*') {
                Some(suffix) => self.wildcards.push((suffix.into(), port, id)),
                None => self.hosts.entry(name.into()).or_default().push((port, id)),
            }
        }
        let mut by_method: HashMap<Method, Trie> = HashMap::new();
        let mut any_method = Trie::default();
        for (i, action) in tool.actions.iter().enumerate() {
            match &action.method {
                Some(m) => by_method
                    .entry(m.clone())
                    .or_default()
                    .insert(&action.template, i),
                None => any_method.insert(&action.template, i),
            }
        }
        // A method's trie also holds the any-method actions, so one walk finds every candidate.
        for (i, action) in tool.actions.iter().enumerate() {
            if action.method.is_none() {
                for trie in by_method.values_mut() {
                    trie.insert(&action.template, i);
                }
            }
        }
        // At one template: actions with body rules are tried first, then method-specific
        // before any-method, then file order.
        let key = |i: usize| {
            let a = tool.actions.get(i);
            (
                a.is_none_or(|a| a.body.is_empty() && a.upgrade.is_none()),
                a.is_none_or(|a| a.method.is_none()),
                i,
            )
        };
        for trie in by_method.values_mut() {
            trie.order(&key);
        }
        any_method.order(&key);
        let mut action_labels: HashMap<Arc<str>, Vec<Arc<str>>> = HashMap::new();
        for action in tool.actions.iter().filter(|a| !a.labels.is_empty()) {
            let set = action_labels.entry(action.name.clone()).or_default();
            for label in &action.labels {
                if !set.contains(label) {
                    set.push(label.clone());
                }
            }
        }
        let mut action_upgrades: HashMap<Arc<str>, Vec<Arc<str>>> = HashMap::new();
        for action in &tool.actions {
            if let Some(proto) = &action.upgrade {
                action_upgrades
                    .entry(action.name.clone())
                    .or_default()
                    .push(proto.clone());
            }
        }
        self.tools.push(Tool {
            name: tool.name,
            hosts: tool.hosts,
            upstream: tool.upstream,
            credential: tool.credential,
            intercept: tool.intercept,
            protocol: tool.protocol,
            labels: tool.labels,
            overrides: tool.overrides,
            actions: tool.actions,
            action_labels,
            action_upgrades,
            by_method,
            any_method,
        });
        id
    }

    /// All tools, in config order.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The tool with index `id`.
    pub fn tool(&self, id: usize) -> Option<&Tool> {
        self.tools.get(id)
    }

    /// The tool serving `host` (lower-case, no trailing dot) on `port`, for a request over
    /// TLS (`tls`) or plain HTTP. A pattern with a port matches that port; one without
    /// matches only the scheme's default port (443 for TLS, 80 for plain HTTP), so another
    /// port of a catalogued host is no tool at all. Exact names before wildcards, a pattern
    /// with a port before one without.
    pub fn tool_for_host(&self, host: &str, port: u16, tls: bool) -> Option<usize> {
        let default_port = if tls { 443 } else { 80 };
        let pick = |entries: &mut dyn Iterator<Item = (Option<u16>, usize)>| {
            let mut portless = None;
            for (p, id) in entries {
                match p {
                    Some(p) if p == port => return Some(id),
                    None if port == default_port && portless.is_none() => portless = Some(id),
                    _ => {}
                }
            }
            portless
        };
        if let Some(entries) = self.hosts.get(host) {
            if let Some(id) = pick(&mut entries.iter().copied()) {
                return Some(id);
            }
        }
        let mut wild = self
            .wildcards
            .iter()
            .filter(|(suffix, _, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
            .map(|(_, p, id)| (*p, *id));
        pick(&mut wild)
    }

    /// Whether classifying this request for `tool` needs its body: an MCP POST, or a
    /// candidate action (one that could win, by method and path) with body rules or
    /// `body:` attributes. Other requests stream through unread.
    pub fn needs_body(&self, tool: Option<usize>, request: &Normalised) -> bool {
        let Some(t) = tool.and_then(|id| self.tools.get(id)) else {
            return false;
        };
        if t.protocol == Protocol::Mcp {
            return request.method == Method::POST;
        }
        // Candidates are tried in order until one without body rules, which always wins.
        t.trie(&request.method)
            .find(&request.segments, &mut |_, entries| {
                for action in entries.iter().filter_map(|&e| t.actions.get(e)) {
                    if action.reads_body() {
                        return Some(true);
                    }
                    if action.body.is_empty() && action.upgrade.is_none() {
                        return Some(false);
                    }
                }
                None
            })
            .unwrap_or(false)
    }

    /// Classify a normalised request for `tool` (or for no known tool), without a body.
    pub fn classify(
        &self,
        tool: Option<usize>,
        request: &Normalised,
        headers: &HeaderMap,
    ) -> Result<Classification, ClassifyError> {
        self.classify_body(tool, request, headers, None)
    }

    /// Classify a normalised request whose parsed body (JSON, or a form as an object of
    /// strings) is `body`. The most specific template wins; at one template, the first
    /// action whose body rules all hold.
    pub fn classify_body(
        &self,
        tool: Option<usize>,
        request: &Normalised,
        headers: &HeaderMap,
        body: Option<&Json>,
    ) -> Result<Classification, ClassifyError> {
        let unknown = |tool| Classification {
            tool,
            action: Arc::from(UNKNOWN),
            attributes: Vec::new(),
        };
        let Some(t) = tool.and_then(|id| self.tools.get(id)) else {
            return Ok(unknown(None));
        };
        if t.protocol == Protocol::Mcp {
            return Ok(match mcp::http_action(&t.name, &request.method) {
                Some(action) => Classification {
                    tool,
                    action,
                    attributes: Vec::new(),
                },
                None => unknown(tool),
            });
        }
        let upgrade = requested_upgrade(headers);
        let holds = |a: &Action| -> Result<bool, CaseVariant> {
            if a.upgrade
                .as_deref()
                .is_some_and(|want| upgrade.as_deref() != Some(want))
            {
                return Ok(false);
            }
            for rule in &a.body {
                if !body.map(|b| rule.holds(b)).transpose()?.unwrap_or(false) {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let best = t
            .trie(&request.method)
            .find(&request.segments, &mut |_, entries| {
                for action in entries.iter().filter_map(|&e| t.actions.get(e)) {
                    match holds(action) {
                        Ok(true) => return Some(Ok(action)),
                        Ok(false) => {}
                        Err(e) => return Some(Err(e)),
                    }
                }
                None
            });
        let Some(action) = best.transpose()? else {
            return Ok(unknown(tool));
        };
        let mut attributes = Vec::with_capacity(action.attributes.len());
        for (name, source) in &action.attributes {
            if let Some(value) = attribute(action, source, request, headers, body)? {
                attributes.push((name.clone(), value));
            }
        }
        Ok(Classification {
            tool,
            action: action.name.clone(),
            attributes,
        })
    }
}

impl Tool {
    fn trie(&self, method: &Method) -> &Trie {
        self.by_method.get(method).unwrap_or(&self.any_method)
    }
}

fn attribute(
    action: &Action,
    source: &AttributeSource,
    request: &Normalised,
    headers: &HeaderMap,
    body: Option<&Json>,
) -> Result<Option<Json>, ClassifyError> {
    match source {
        AttributeSource::Path(n) => {
            let captured = action
                .template
                .segments()
                .iter()
                .zip(&request.segments)
                .filter(|(t, _)| matches!(t, Segment::Capture(_)))
                .nth(*n)
                .map(|(_, value)| Json::String(value.clone()));
            Ok(captured)
        }
        AttributeSource::Query(key) => {
            let alias = request.params.iter().find(|(k, _)| query_alias(k, key));
            if let Some((got, _)) = alias {
                return Err(ClassifyError::QueryVariant {
                    got: clip(got),
                    want: key.clone(),
                });
            }
            let mut values = request.params.iter().filter(|(k, _)| k == key);
            let first = values.next().map(|(_, v)| Json::String(v.clone()));
            if values.next().is_some() {
                return Err(ClassifyError::AmbiguousQuery(key.clone()));
            }
            Ok(first)
        }
        AttributeSource::Header(name) => {
            let mut values = headers.get_all(name).iter();
            let Some(first) = values.next() else {
                return Ok(None);
            };
            if values.next().is_some() {
                return Err(ClassifyError::AmbiguousHeader(name.to_string()));
            }
            let value = first
                .to_str()
                .map_err(|_| ClassifyError::HeaderNotUtf8(name.to_string()))?;
            Ok(Some(Json::String(value.to_string())))
        }
        AttributeSource::Body(pointer) => match body {
            Some(b) => Ok(pointer.find(b)?.cloned()),
            None => Ok(None),
        },
    }
}

/// Whether the query parameter `name` is, to some tool, the parameter `key` spelled
/// differently: `Amount`, `amount[]`, `amount[x]` for `amount` (case-insensitive binding,
/// PHP's `.`/` ` as `_`, Rails/PHP/qs brackets).
fn query_alias(name: &str, key: &str) -> bool {
    if name == key {
        return false;
    }
    let base = names::base_name(name);
    names::same_parameter(name, key)
        || (!key.contains('[') && (base == key || names::same_parameter(base, key)))
}

/// A tool as validated config describes it, before indexing.
#[derive(Debug)]
pub struct ToolSpec {
    pub name: Arc<str>,
    pub hosts: Vec<String>,
    pub upstream: Option<Upstream>,
    pub credential: Option<String>,
    pub intercept: bool,
    pub protocol: Protocol,
    pub labels: Vec<Arc<str>>,
    pub overrides: Overrides,
    pub actions: Vec<Action>,
}

impl Tool {
    /// Whether `action` of this tool may switch the connection to `protocol`
    /// (`match.upgrade`).
    pub fn may_upgrade(&self, action: &str, protocol: &str) -> bool {
        self.action_upgrades
            .get(action)
            .is_some_and(|p| p.iter().any(|p| &**p == protocol))
    }

    /// The labels `action` of this tool sets when it is forwarded: the tool's, then the
    /// action's own.
    pub fn labels_of(&self, action: &str) -> Vec<Arc<str>> {
        let mut out = self.labels.clone();
        for label in self.action_labels.get(action).into_iter().flatten() {
            if !out.contains(label) {
                out.push(label.clone());
            }
        }
        out
    }
}

/// Split `host[:port]` (IPv6 in brackets) into the host and an optional port.
pub fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host, port);
        }
        return (s, None);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (s, None),
        },
        _ => (s, None),
    }
}
