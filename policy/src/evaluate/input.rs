//! The policy input document (DESIGN.md §5), built straight into a regorus `Value`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use regorus::Value;
use serde_json::Value as Json;

use crate::chain::{Outcome, View};

/// Headers that carry credentials: never shown to policy, always stripped before forwarding.
pub const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-toolgate-task-token",
];

/// One earlier action of the same task.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainEntry {
    pub seq: u64,
    pub action: Arc<str>,
    pub tool: Option<Arc<str>>,
    /// The agent that took it.
    pub agent: Arc<str>,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// How it ended; `None` while it is in flight (`pending: true`, no status).
    pub outcome: Option<Outcome>,
    pub attributes: Vec<(Arc<str>, Json)>,
    pub at: SystemTime,
}

/// The request as policy sees it (credential-bearing headers removed).
#[derive(Debug, Clone)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub params: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    /// Extra header names to hide (the tool's credential header).
    pub hidden: &'a [http::HeaderName],
    pub body: Option<&'a Json>,
}

/// Everything a decision may depend on.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub agent_id: &'a str,
    pub agent_claims: Option<&'a Json>,
    pub task_id: &'a str,
    pub task_claims: Option<&'a Json>,
    /// The task was named by a verified task token.
    pub task_verified: bool,
    pub action: &'a str,
    pub tool: Option<&'a str>,
    pub attributes: &'a [(Arc<str>, Json)],
    pub request: RequestView<'a>,
    /// The task's earlier actions, its labels and the agent's (`chain::Ledger::view`, or
    /// [`View::of_chain`]).
    pub state: View,
    pub now: SystemTime,
}

impl View {
    /// A view with `chain` as the task's history, no labels, the history complete.
    pub fn of_chain(chain: Value) -> View {
        View {
            chain,
            task_labels: Value::from(BTreeMap::new()),
            agent_labels: Value::from(BTreeMap::new()),
            history_complete: true,
        }
    }
}

/// `input.chain` from plain entries (tests, offline runs).
pub fn chain_value(entries: &[ChainEntry]) -> Value {
    Value::from(entries.iter().map(ChainEntry::to_value).collect::<Vec<_>>())
}

/// The input document's fixed object keys, made once: each request then clones an `Arc`
/// per key instead of allocating and copying a string (a third of the document's cost).
struct Keys {
    agent: Value,
    id: Value,
    claims: Value,
    labels: Value,
    task: Value,
    revoked: Value,
    verified: Value,
    history_complete: Value,
    action: Value,
    name: Value,
    tool: Value,
    attributes: Value,
    request: Value,
    chain: Value,
    now: Value,
    method: Value,
    scheme: Value,
    host: Value,
    port: Value,
    path: Value,
    query: Value,
    headers: Value,
    body: Value,
    // A chain entry's own keys, and the words its fields take.
    seq: Value,
    decision: Value,
    pending: Value,
    at: Value,
    outcome: Value,
    status: Value,
    dry_run: Value,
    allow: Value,
    deny: Value,
    error: Value,
    response: Value,
    refused: Value,
    agent_disconnected: Value,
    upstream_error: Value,
    timeout: Value,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    agent: Value::from("agent"),
    id: Value::from("id"),
    claims: Value::from("claims"),
    labels: Value::from("labels"),
    task: Value::from("task"),
    revoked: Value::from("revoked"),
    verified: Value::from("verified"),
    history_complete: Value::from("history_complete"),
    action: Value::from("action"),
    name: Value::from("name"),
    tool: Value::from("tool"),
    attributes: Value::from("attributes"),
    request: Value::from("request"),
    chain: Value::from("chain"),
    now: Value::from("now"),
    method: Value::from("method"),
    scheme: Value::from("scheme"),
    host: Value::from("host"),
    port: Value::from("port"),
    path: Value::from("path"),
    query: Value::from("query"),
    headers: Value::from("headers"),
    body: Value::from("body"),
    seq: Value::from("seq"),
    decision: Value::from("decision"),
    pending: Value::from("pending"),
    at: Value::from("at"),
    outcome: Value::from("outcome"),
    status: Value::from("status"),
    dry_run: Value::from("dry_run"),
    allow: Value::from("allow"),
    deny: Value::from("deny"),
    error: Value::from("error"),
    response: Value::from("response"),
    refused: Value::from("refused"),
    agent_disconnected: Value::from("agent_disconnected"),
    upstream_error: Value::from("upstream_error"),
    timeout: Value::from("timeout"),
});

/// The fixed words of a chain entry, as values made once: the keys it is given after it is
/// made (`pending`, `outcome`, `status`, `dry_run`, `decision`), a decision and an outcome.
/// Anything else is made afresh.
pub fn word(s: &str) -> Value {
    let k = &*KEYS;
    let made = match s {
        "pending" => &k.pending,
        "outcome" => &k.outcome,
        "status" => &k.status,
        "dry_run" => &k.dry_run,
        "decision" => &k.decision,
        "allow" => &k.allow,
        "deny" => &k.deny,
        "error" => &k.error,
        "response" => &k.response,
        "refused" => &k.refused,
        "agent_disconnected" => &k.agent_disconnected,
        "upstream_error" => &k.upstream_error,
        "timeout" => &k.timeout,
        _ => return Value::from(s),
    };
    made.clone()
}

/// An object with keys made once ([`KEYS`]).
fn keyed<const N: usize>(fields: [(&Value, Value); N]) -> Value {
    let map: BTreeMap<Value, Value> = fields.into_iter().map(|(k, v)| (k.clone(), v)).collect();
    Value::from(map)
}

thread_local! {
    /// The last `now` written, by whole second: requests within one second share it.
    static NOW: RefCell<Option<(u64, Value)>> = const { RefCell::new(None) };
}

/// `input.now` and a chain entry's `at`: [`timestamp`] of `t`, formatted once per second per
/// thread.
fn now_value(t: SystemTime) -> Value {
    let Ok(since) = t.duration_since(UNIX_EPOCH) else {
        return Value::from(timestamp(t));
    };
    let second = since.as_secs();
    NOW.with(|cell| {
        let Ok(mut cached) = cell.try_borrow_mut() else {
            return Value::from(timestamp(t));
        };
        match &*cached {
            Some((s, v)) if *s == second => v.clone(),
            _ => {
                let v = Value::from(timestamp(t));
                *cached = Some((second, v.clone()));
                v
            }
        }
    })
}

fn json(v: Option<&Json>) -> Value {
    v.map(|j| Value::from(j.clone()))
        .unwrap_or_else(|| Value::from(BTreeMap::new()))
}

fn attributes(attrs: &[(Arc<str>, Json)]) -> Value {
    let map: BTreeMap<Value, Value> = attrs
        .iter()
        .map(|(k, v)| (Value::from(&**k), Value::from(v.clone())))
        .collect();
    Value::from(map)
}

fn opt_str(s: Option<&str>) -> Value {
    s.map(Value::from).unwrap_or(Value::Null)
}

/// RFC 3339 in UTC with second precision, as chain entries and `now` are written.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl ChainEntry {
    /// This entry as a policy value.
    pub fn to_value(&self) -> Value {
        let k = &*KEYS;
        let mut entry = keyed([
            (&k.seq, Value::from(self.seq)),
            (&k.action, Value::from(&*self.action)),
            (&k.tool, opt_str(self.tool.as_deref())),
            (&k.agent, Value::from(&*self.agent)),
            (&k.decision, word(self.decision)),
            (&k.pending, Value::from(self.outcome.is_none())),
            (&k.attributes, attributes(&self.attributes)),
            (&k.at, now_value(self.at)),
        ]);
        if let (Some(outcome), Ok(map)) = (self.outcome, entry.as_object_mut()) {
            map.insert(k.outcome.clone(), word(outcome.as_str()));
            if let Some(status) = outcome.status() {
                map.insert(k.status.clone(), Value::from(u64::from(status)));
            }
        }
        entry
    }
}

impl RequestView<'_> {
    fn headers_value(&self) -> Value {
        let mut map: BTreeMap<Value, Value> = BTreeMap::new();
        for name in self.headers.keys() {
            let n = name.as_str();
            if CREDENTIAL_HEADERS.contains(&n) || self.hidden.contains(name) {
                continue;
            }
            let mut values = self.headers.get_all(name).iter();
            let value = match (values.next(), values.next()) {
                // The common case, one value: no list, no join.
                (Some(one), None) => Value::from(&*String::from_utf8_lossy(one.as_bytes())),
                _ => Value::from(
                    self.headers
                        .get_all(name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            };
            map.insert(Value::from(n), value);
        }
        Value::from(map)
    }

    fn query_value(&self) -> Value {
        // A key given once maps to its value; a repeated key maps to the list of its values.
        let mut grouped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, v) in self.params {
            grouped.entry(k.as_str()).or_default().push(v.as_str());
        }
        let map: BTreeMap<Value, Value> = grouped
            .into_iter()
            .map(|(k, vs)| {
                let v = match vs.as_slice() {
                    [one] => Value::from(*one),
                    many => Value::from(many.iter().map(|s| Value::from(*s)).collect::<Vec<_>>()),
                };
                (Value::from(k), v)
            })
            .collect();
        Value::from(map)
    }

    fn to_value(&self) -> Value {
        let k = &*KEYS;
        keyed([
            (&k.method, Value::from(self.method)),
            (&k.scheme, Value::from(self.scheme)),
            (&k.host, Value::from(self.host)),
            (&k.port, Value::from(u64::from(self.port))),
            (&k.path, Value::from(self.path)),
            (&k.query, self.query_value()),
            (&k.headers, self.headers_value()),
            (
                &k.body,
                self.body
                    .map(|b| Value::from(b.clone()))
                    .unwrap_or(Value::Null),
            ),
        ])
    }
}

impl Input<'_> {
    /// The input document.
    pub fn to_value(&self) -> Value {
        let k = &*KEYS;
        keyed([
            (
                &k.agent,
                keyed([
                    (&k.id, Value::from(self.agent_id)),
                    (&k.claims, json(self.agent_claims)),
                    (&k.labels, self.state.agent_labels.clone()),
                ]),
            ),
            (
                &k.task,
                keyed([
                    (&k.id, Value::from(self.task_id)),
                    (&k.claims, json(self.task_claims)),
                    (&k.revoked, Value::from(false)),
                    (&k.verified, Value::from(self.task_verified)),
                    (&k.labels, self.state.task_labels.clone()),
                    (
                        &k.history_complete,
                        Value::from(self.state.history_complete),
                    ),
                ]),
            ),
            (
                &k.action,
                keyed([
                    (&k.name, Value::from(self.action)),
                    (&k.tool, opt_str(self.tool)),
                    (&k.attributes, attributes(self.attributes)),
                ]),
            ),
            (&k.request, self.request.to_value()),
            (&k.chain, self.state.chain.clone()),
            (&k.now, now_value(self.now)),
        ])
    }
}

/// Mark `input` as a `tools/list` filter evaluation (`input.listing: true`): the action is
/// the `tools/call` the listed tool would be, with no arguments; nothing is forwarded.
pub fn mark_listing(input: &mut Value) {
    if let Ok(map) = input.as_object_mut() {
        map.insert(Value::from("listing"), Value::from(true));
    }
}

/// Set `input.action.definition`: what toolgate knows of an MCP tool's definition
/// (`classify::mcp::definition::Status::to_value`).
pub fn set_definition(input: &mut Value, definition: Value) {
    if let Ok(map) = input.as_object_mut() {
        if let Some(Ok(action)) = map
            .get_mut(&Value::from("action"))
            .map(Value::as_object_mut)
        {
            action.insert(Value::from("definition"), definition);
        }
    }
}
