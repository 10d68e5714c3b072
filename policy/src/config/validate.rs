//! Raw config → validated, compiled config. Every problem is collected with its field path;
//! nothing is reported one at a time.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::matching;
use super::raw::{RawAction, RawConfig, RawDecisionLog, RawPolicy, RawRoute, RawTool};
use super::{credentials, identity};
use super::{
    ChainSettings, Config, ConfigError, ConfigErrors, CredentialSpec, DecisionLogSink, Files,
    Listen, PolicyMode, PolicySource, Route, ShadowSource, Telemetry, TlsSettings, Vars,
};
use crate::classify::{
    Action, AttributeSource, Catalog, Overrides, PathTemplate, ToolSpec, Upstream,
};
use crate::normalise;

/// Default proxy listener.
pub const DEFAULT_PROXY: &str = "127.0.0.1:15001";
/// Default admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";
/// Default cap on tasks the chain ledger remembers.
pub const DEFAULT_MAX_TASKS: usize = 256;
/// Default rule answering the decision.
pub const DEFAULT_QUERY: &str = "data.toolgate.decision";

#[derive(Default)]
pub(super) struct Collector {
    errors: Vec<ConfigError>,
    /// Settings that load but deserve the operator's attention (`toolgate check` prints them).
    warnings: Vec<ConfigError>,
}

impl Collector {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub(super) fn compile(
    raw: RawConfig,
    origin: &Path,
    files: &dyn Files,
    vars: &dyn Vars,
) -> Result<Config, ConfigErrors> {
    let mut c = Collector::default();
    let listen = Listen {
        proxy: addr(
            &mut c,
            "listen.proxy",
            raw.listen.proxy.as_deref().unwrap_or(DEFAULT_PROXY),
        ),
        transparent: raw
            .listen
            .transparent
            .as_deref()
            .map(|a| addr(&mut c, "listen.transparent", a)),
        admin: addr(
            &mut c,
            "listen.admin",
            raw.listen.admin.as_deref().unwrap_or(DEFAULT_ADMIN),
        ),
        operator: super::operator::socket(&mut c, raw.listen.operator.as_deref(), files),
    };
    super::tls::distinct_listeners(&mut c, &listen);
    let workers = positive(&mut c, "workers", raw.workers.unwrap_or(2));
    let agent = identity::agent(&mut c, &raw.agent, files, vars);
    let task_tokens = identity::task_tokens(&mut c, raw.task_tokens.as_ref(), files);
    let credentials = credentials::compile(&mut c, &raw.credentials, &agent, files, vars);
    let delegation = super::delegation::delegation(&mut c, raw.delegation.as_ref(), &agent, files);
    let introspection = super::delegation::introspection(&mut c, &raw.introspection, files);
    reserved_host(&mut c, &raw.tools);
    let (catalog, tool_names) = catalog(&mut c, &raw.tools, &credentials);
    let mut mcp = super::mcp::settings(&mut c, &raw.mcp);
    for (i, tool) in raw.tools.iter().enumerate() {
        let Some(file) = &tool.lock else { continue };
        let path = format!("tools[{i}].lock");
        if tool.protocol.as_deref() != Some("mcp") {
            c.push(
                path,
                "a lock file pins MCP tool definitions: only for protocol: mcp",
            );
        } else if let Some(lock) = super::mcp::lock(&mut c, &path, &tool.name, file, files) {
            mcp.locks.insert(tool.name.clone(), Arc::new(lock));
        }
    }
    let routes = routes(&mut c, &raw.routes, &tool_names, &catalog);
    let policy = match &raw.policy {
        Some(p) => policy(&mut c, p, files),
        None => {
            c.push("policy", "required: at least `files` with the Rego modules");
            None
        }
    };
    let shadow = raw.policy.as_ref().and_then(|p| shadow(p, files));
    let chain = ChainSettings {
        task_header: header_name(
            &mut c,
            "chain.task_header",
            raw.chain
                .task_header
                .as_deref()
                .unwrap_or("x-toolgate-task"),
        ),
        max_actions: positive(
            &mut c,
            "chain.max_actions",
            raw.chain.max_actions.unwrap_or(64),
        ),
        max_tasks: positive(
            &mut c,
            "chain.max_tasks",
            raw.chain.max_tasks.unwrap_or(DEFAULT_MAX_TASKS),
        ),
        idle_ttl: duration(
            &mut c,
            "chain.idle_ttl",
            raw.chain.idle_ttl.as_deref(),
            "15m",
        ),
        agent_label_ttl: duration(
            &mut c,
            "chain.agent_label_ttl",
            raw.chain.agent_label_ttl.as_deref(),
            "24h",
        ),
        require_task_token: raw.chain.require_task_token.unwrap_or(false),
        ended_retention: duration(
            &mut c,
            "chain.ended_retention",
            raw.chain.ended_retention.as_deref(),
            "24h",
        ),
    };
    if chain.ended_retention > super::LONGEST_REVOCATION_TTL {
        c.push("chain.ended_retention", "must be at most 3650d");
    }
    if chain.require_task_token
        && raw
            .task_tokens
            .as_ref()
            .is_none_or(|t| t.issuers.is_empty())
    {
        c.push(
            "chain.require_task_token",
            "needs task_tokens.issuers: without an issuer no task token can verify, and every request would be refused",
        );
    }
    let (sink, input) = match &raw.telemetry.decision_log {
        None => (None, false),
        Some(RawDecisionLog::Sink(s)) => (Some(s.as_str()), false),
        Some(RawDecisionLog::Detailed(d)) => (d.sink.as_deref(), d.input.unwrap_or(false)),
    };
    let telemetry = Telemetry {
        decision_log: decision_log(sink, files),
        decision_log_input: input,
        otlp: super::telemetry::otlp(raw.telemetry.otlp.as_ref(), &mut c.errors),
    };
    let admin = super::operator::admin(&mut c, &raw.admin, files);
    let state = super::state::state(&mut c, &raw.state, files);
    let approvals = super::approvals::approvals(&mut c, &raw.approvals, &listen, files);
    let tls = TlsSettings {
        upstream_ca: raw
            .tls
            .upstream_ca
            .as_deref()
            .map(|p| files.locate(Path::new(p))),
        ca: raw
            .tls
            .ca
            .as_ref()
            .and_then(|ca| super::tls::ca(&mut c, ca, files)),
    };
    let limits = super::limits::limits(&mut c, &raw.limits);
    match (c.errors.is_empty(), policy) {
        (true, Some(policy)) => Ok(Config {
            origin: origin.to_path_buf(),
            listen,
            workers,
            agent,
            catalog: Arc::new(catalog),
            routes,
            policy,
            shadow,
            credentials,
            telemetry,
            admin,
            state,
            approvals,
            chain,
            tls,
            limits,
            task_tokens,
            mcp,
            delegation,
            introspection,
            fingerprint: 0,
            warnings: c.warnings,
        }),
        _ => Err(ConfigErrors {
            origin: origin.to_path_buf(),
            errors: c.errors,
        }),
    }
}

/// No tool may be catalogued at toolgate's own host: requests there are toolgate's
/// (delegation, `crate::delegation::HOST`), never a tool's.
fn reserved_host(c: &mut Collector, tools: &[RawTool]) {
    for (i, tool) in tools.iter().enumerate() {
        for (j, host) in tool.hosts.iter().enumerate() {
            let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
            if name.eq_ignore_ascii_case(crate::delegation::HOST) {
                c.push(
                    format!("tools[{i}].hosts[{j}]"),
                    format!(
                        "{} is toolgate's own host (delegation requests); no tool may use it",
                        crate::delegation::HOST
                    ),
                );
            }
        }
    }
}

fn addr(c: &mut Collector, path: &str, s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        c.push(
            path,
            format!("{s:?} is not an address like 127.0.0.1:15001"),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

pub(super) fn duration(c: &mut Collector, path: &str, s: Option<&str>, default: &str) -> Duration {
    let s = s.unwrap_or(default);
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            c.push(path, "must be longer than zero");
            Duration::from_secs(1)
        }
        Err(e) => {
            c.push(
                path,
                format!("{s:?} is not a duration like 30s or 15m: {e}"),
            );
            Duration::from_secs(1)
        }
    }
}

fn positive(c: &mut Collector, path: &str, n: usize) -> usize {
    if n == 0 {
        c.push(path, "must be at least 1");
    }
    n.max(1)
}

pub(super) fn header_name(c: &mut Collector, path: &str, s: &str) -> HeaderName {
    HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()).unwrap_or_else(|_| {
        c.push(path, format!("{s:?} is not a valid header name"));
        HeaderName::from_static("x-invalid")
    })
}

pub(super) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn catalog(
    c: &mut Collector,
    raw: &[RawTool],
    credentials: &BTreeMap<String, CredentialSpec>,
) -> (Catalog, BTreeMap<String, usize>) {
    let mut catalog = Catalog::new();
    let mut names = BTreeMap::new();
    let mut hosts_seen: HashSet<String> = HashSet::new();
    for (i, tool) in raw.iter().enumerate() {
        let path = format!("tools[{i}]");
        if !is_name(&tool.name) {
            c.push(
                format!("{path}.name"),
                "must be a non-empty name of letters, digits, '_', '-' and '.'",
            );
        }
        if names.contains_key(&tool.name) {
            c.push(
                format!("{path}.name"),
                format!("tool {:?} is defined twice", tool.name),
            );
        }
        let hosts = hosts(c, &path, tool, &mut hosts_seen);
        let upstream = tool
            .upstream
            .as_deref()
            .and_then(|u| upstream(c, &format!("{path}.upstream"), u));
        if upstream.as_ref().is_some_and(|u| !u.tls) {
            c.warn(
                format!("{path}.upstream"),
                format!(
                    "tool {:?} is sent plain HTTP: its requests, and any credential injected into them, cross the network unencrypted; use https:// unless that network is trusted",
                    tool.name
                ),
            );
        }
        if hosts.is_empty() && upstream.is_none() {
            c.push(
                format!("{path}.hosts"),
                "a tool needs at least one host (or an upstream for route-only use)",
            );
        }
        if let Some(cred) = &tool.credential {
            if !credentials.contains_key(cred) {
                c.push(
                    format!("{path}.credential"),
                    format!("no credential named {cred:?} under `credentials`"),
                );
            }
        }
        let actions = tool
            .actions
            .iter()
            .enumerate()
            .filter_map(|(j, a)| action(c, &format!("{path}.actions[{j}]"), a))
            .collect();
        let protocol = matching::protocol(
            &mut c.errors,
            &path,
            tool.protocol.as_deref(),
            tool.actions.len(),
        );
        let overrides = match tool.overrides.as_deref() {
            None | Some("refuse") => Overrides::Refuse,
            Some("allow") => Overrides::Allow,
            Some(other) => {
                c.push(
                    format!("{path}.overrides"),
                    format!("{other:?} must be `refuse` (the default) or `allow`"),
                );
                Overrides::Refuse
            }
        };
        let id = catalog.push(ToolSpec {
            name: Arc::from(tool.name.as_str()),
            hosts,
            upstream,
            credential: tool.credential.clone(),
            intercept: tool.intercept.unwrap_or(true),
            protocol,
            labels: labels(c, &format!("{path}.labels"), &tool.labels),
            overrides,
            actions,
        });
        names.entry(tool.name.clone()).or_insert(id);
    }
    (catalog, names)
}

fn hosts(c: &mut Collector, path: &str, tool: &RawTool, seen: &mut HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, host) in tool.hosts.iter().enumerate() {
        let hpath = format!("{path}.hosts[{k}]");
        let (wild, rest) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        match normalise::authority(rest) {
            Ok((h, port)) => {
                let name = if wild { format!("*.{h}") } else { h };
                let canonical = match port {
                    Some(p) if name.contains(':') => format!("[{name}]:{p}"),
                    Some(p) => format!("{name}:{p}"),
                    None => name,
                };
                if !seen.insert(canonical.clone()) {
                    c.push(
                        &hpath,
                        format!("host {canonical:?} is listed by another tool"),
                    );
                }
                out.push(canonical);
            }
            Err(e) => c.push(&hpath, e.to_string()),
        }
    }
    out
}

fn upstream(c: &mut Collector, path: &str, url: &str) -> Option<Upstream> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        c.push(path, format!("{url:?} must start with http:// or https://"));
        return None;
    };
    let (authority, base) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if base.contains(['?', '#']) {
        c.push(path, "must not contain a query or fragment");
        return None;
    }
    let base = base.trim_end_matches('/');
    if !base.is_empty() {
        if let Err(e) = normalise::request("GET", base.as_bytes()) {
            c.push(path, format!("base path: {e}"));
            return None;
        }
    }
    match normalise::authority(authority) {
        Ok((host, port)) => Some(Upstream {
            tls,
            host,
            port: port.unwrap_or(if tls { 443 } else { 80 }),
            base_path: base.to_string(),
        }),
        Err(e) => {
            c.push(path, e.to_string());
            None
        }
    }
}

fn action(c: &mut Collector, path: &str, raw: &RawAction) -> Option<Action> {
    if !is_name(&raw.name) {
        c.push(
            format!("{path}.name"),
            "must be a non-empty name like ticket.close",
        );
    }
    let method = match raw.matcher.method.as_deref() {
        None | Some("*") => None,
        Some(m) => match normalise::request(m, b"/") {
            Ok(n) => Some(n.method),
            Err(_) => {
                c.push(
                    format!("{path}.match.method"),
                    format!("{m:?} is not an upper-case HTTP method"),
                );
                None
            }
        },
    };
    let Some(template_text) = raw.matcher.path.as_deref() else {
        c.push(
            format!("{path}.match.path"),
            "required: a path template like /rest/api/3/issue/{issue}",
        );
        return None;
    };
    let template = match template_text.parse::<PathTemplate>() {
        Ok(t) => t,
        Err(e) => {
            c.push(format!("{path}.match.path"), e.to_string());
            return None;
        }
    };
    let mut attributes = Vec::new();
    for (name, source) in &raw.attributes {
        let apath = format!("{path}.attributes.{name}");
        let parsed = match source.split_once(':') {
            Some(("path", p)) => match template.capture_index(p) {
                Some(n) => Some(AttributeSource::Path(n)),
                None => {
                    c.push(
                        &apath,
                        format!("unknown placeholder {{{p}}}: {template_text} has no such capture"),
                    );
                    None
                }
            },
            Some(("query", q)) if !q.is_empty() => Some(AttributeSource::Query(q.to_string())),
            Some(("header", h)) => Some(AttributeSource::Header(header_name(c, &apath, h))),
            Some(("body", p)) => matching::body_attribute(&mut c.errors, &apath, p),
            _ => {
                c.push(
                    &apath,
                    format!("{source:?} must be path:<placeholder>, query:<name>, header:<name> or body:/<pointer>"),
                );
                None
            }
        };
        if let Some(p) = parsed {
            attributes.push((Arc::from(name.as_str()), p));
        }
    }
    let body = matching::body_rules(&mut c.errors, path, raw.matcher.body.as_ref());
    Some(Action {
        name: Arc::from(raw.name.as_str()),
        method,
        template,
        body,
        attributes,
        labels: labels(c, &format!("{path}.labels"), &raw.labels),
        upgrade: raw
            .matcher
            .upgrade
            .as_deref()
            .and_then(|u| upgrade(c, &format!("{path}.match.upgrade"), u)),
    })
}

/// `match.upgrade`: a protocol token an action may switch to; never `h2c`, which toolgate
/// always refuses (the tunnel would carry requests it cannot see).
fn upgrade(c: &mut Collector, path: &str, raw: &str) -> Option<Arc<str>> {
    let name = raw.to_ascii_lowercase();
    if name == "h2c" {
        c.push(path, "h2c is always refused: an upgraded HTTP/2 connection carries requests toolgate cannot classify");
        return None;
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        c.push(
            path,
            format!("{raw:?} is not a protocol name like websocket"),
        );
        return None;
    }
    Some(Arc::from(name.as_str()))
}

fn labels(c: &mut Collector, path: &str, raw: &[String]) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for (i, label) in raw.iter().enumerate() {
        if !crate::labels::is_label(label) {
            c.push(
                format!("{path}[{i}]"),
                format!("{label:?} is not a label: 1 to 64 of A-Z a-z 0-9 _ . : - /"),
            );
        } else if !out.iter().any(|l| **l == **label) {
            out.push(Arc::from(label.as_str()));
        }
    }
    if out.len() > crate::labels::MAX_LABELS {
        c.push(
            path,
            format!("at most {} labels", crate::labels::MAX_LABELS),
        );
    }
    out
}

fn routes(
    c: &mut Collector,
    raw: &[RawRoute],
    tools: &BTreeMap<String, usize>,
    catalog: &Catalog,
) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let path = format!("routes[{i}]");
        let canonical = normalise::request("GET", r.prefix.as_bytes()).map(|n| n.path);
        let valid = r.prefix.len() > 1
            && r.prefix.ends_with('/')
            && canonical.as_deref() == Ok(r.prefix.as_str());
        if !valid {
            c.push(
                format!("{path}.prefix"),
                format!(
                    "{:?} must be a canonical path that starts and ends with '/', like /jira/",
                    r.prefix
                ),
            );
        }
        if out.iter().any(|o| o.prefix == r.prefix) {
            c.push(
                format!("{path}.prefix"),
                format!("prefix {:?} is routed twice", r.prefix),
            );
        }
        match tools.get(&r.tool) {
            Some(&id) => {
                let routable = catalog.tool(id).is_some_and(|t| {
                    t.upstream.is_some() || t.hosts.iter().any(|h| !h.starts_with('*'))
                });
                if !routable {
                    c.push(
                        format!("{path}.tool"),
                        format!(
                            "tool {:?} needs an upstream or a non-wildcard host to be routed to",
                            r.tool
                        ),
                    );
                }
                out.push(Route {
                    prefix: r.prefix.clone(),
                    tool: id,
                });
            }
            None => c.push(
                format!("{path}.tool"),
                format!("no tool named {:?}", r.tool),
            ),
        }
    }
    out
}

fn policy(c: &mut Collector, raw: &RawPolicy, files: &dyn Files) -> Option<PolicySource> {
    let query = raw
        .query
        .clone()
        .unwrap_or_else(|| DEFAULT_QUERY.to_string());
    let mut source = sources(c, "policy", &raw.files, &raw.data, query, files);
    source.mode = match raw.mode.as_deref() {
        None | Some("enforce") => PolicyMode::Enforce,
        Some("dry-run") => PolicyMode::DryRun,
        Some(other) => {
            c.push(
                "policy.mode",
                format!("{other:?} must be `enforce` or `dry-run`"),
            );
            PolicyMode::Enforce
        }
    };
    Some(source)
}

/// `policy.shadow`, its problems collected apart (see [`ShadowSource`]).
fn shadow(raw: &RawPolicy, files: &dyn Files) -> Option<ShadowSource> {
    let shadow = raw.shadow.as_ref()?;
    let query = shadow
        .query
        .clone()
        .or_else(|| raw.query.clone())
        .unwrap_or_else(|| DEFAULT_QUERY.to_string());
    let mut c = Collector::default();
    let source = sources(
        &mut c,
        "policy.shadow",
        &shadow.files,
        &shadow.data,
        query,
        files,
    );
    Some(ShadowSource {
        source: if c.errors.is_empty() {
            Ok(source)
        } else {
            Err(c.errors)
        },
    })
}

/// Read the Rego modules matching `patterns` and the data documents `data` of the policy at
/// `path` (`policy`, `policy.shadow`).
fn sources(
    c: &mut Collector,
    path: &str,
    patterns: &[String],
    data_files: &[String],
    query: String,
    files: &dyn Files,
) -> PolicySource {
    if patterns.is_empty() {
        c.push(
            format!("{path}.files"),
            "required: at least one Rego file or glob",
        );
    }
    let mut modules = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let path = format!("{path}.files[{i}]");
        match files.glob(pattern) {
            Ok(found) if found.is_empty() => c.push(&path, format!("{pattern:?} matches no file")),
            Ok(found) => {
                for f in found {
                    match files.read(&f).map(String::from_utf8) {
                        Ok(Ok(text)) => modules.push((f.display().to_string(), text)),
                        Ok(Err(_)) => c.push(&path, format!("{}: not valid UTF-8", f.display())),
                        Err(e) => c.push(&path, format!("{}: {e}", f.display())),
                    }
                }
            }
            Err(e) => c.push(&path, format!("bad pattern {pattern:?}: {e}")),
        }
    }
    let mut data = serde_json::Map::new();
    for (i, file) in data_files.iter().enumerate() {
        let path = format!("{path}.data[{i}]");
        let doc = files
            .read(Path::new(file))
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_yaml::from_slice::<serde_json::Value>(&bytes).map_err(|e| e.to_string())
            });
        match doc {
            Ok(serde_json::Value::Object(map)) => {
                for (k, v) in map {
                    if data.contains_key(&k) {
                        c.push(&path, format!("{file}: top-level key {k:?} is also defined by an earlier data file"));
                    }
                    data.insert(k, v);
                }
            }
            Ok(_) => c.push(&path, format!("{file}: a data document must be a mapping")),
            Err(e) => c.push(&path, format!("{file}: {e}")),
        }
    }
    if !query.starts_with("data.") {
        c.push(
            format!("{path}.query"),
            format!("{query:?} must be a rule path like data.toolgate.decision"),
        );
    }
    PolicySource {
        modules,
        data: serde_json::Value::Object(data),
        query,
        mode: PolicyMode::Enforce,
    }
}

fn decision_log(sink: Option<&str>, files: &dyn Files) -> DecisionLogSink {
    match sink {
        None | Some("stdout") => DecisionLogSink::Stdout,
        Some("off") => DecisionLogSink::Off,
        Some(path) => DecisionLogSink::File(files.locate(Path::new(path))),
    }
}
