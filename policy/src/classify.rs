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

pub use body::{BodyRule, Expect, JsonPointer, PointerError, Scalar, MAX_POINTER_TOKENS};
pub use template::{PathTemplate, Segment, TemplateError, Trie, MAX_SEGMENTS};

use crate::normalise::Normalised;

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
    actions: Vec<Action>,
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
                a.is_none_or(|a| a.body.is_empty()),
                a.is_none_or(|a| a.method.is_none()),
                i,
            )
        };
        for trie in by_method.values_mut() {
            trie.order(&key);
        }
        any_method.order(&key);
        self.tools.push(Tool {
            name: tool.name,
            hosts: tool.hosts,
            upstream: tool.upstream,
            credential: tool.credential,
            intercept: tool.intercept,
            protocol: tool.protocol,
            actions: tool.actions,
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
                    if action.body.is_empty() {
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
        let holds = |a: &Action| {
            a.body
                .iter()
                .all(|rule| body.is_some_and(|b| rule.holds(b)))
        };
        let best = t
            .trie(&request.method)
            .find(&request.segments, &mut |_, entries| {
                entries
                    .iter()
                    .filter_map(|&e| t.actions.get(e))
                    .find(|a| holds(a))
            });
        let Some(action) = best else {
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
        AttributeSource::Body(pointer) => Ok(body.and_then(|b| pointer.lookup(b)).cloned()),
    }
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
    pub actions: Vec<Action>,
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
