//! `tools/list` filtered by policy: the answer to an allowed `tools/list` is rewritten so that
//! it lists only the tools this agent, in this task, may call. Each listed tool is decided as
//! the `tools/call` it would be — action `<tool>.<name>`, no arguments, `input.listing: true`,
//! `input.action.definition` — with the rest of the input as the `tools/list` request's own
//! (same agent, task, chain, labels, request line and headers; `input.request.body` is the
//! call as a client would send it). A tool whose decision denies (or fails) is dropped; one
//! that needs approval stays listed (it may be called, with a human's yes). In dry-run mode
//! nothing is dropped. The listing evaluations are not actions the agent took: they are not
//! chain entries, get no decision-log line and no span.
//!
//! Only `result.tools` of the answer to the listed request ids changes: `nextCursor` and
//! every other member stay, so pagination is unchanged (a page may become shorter, or
//! empty). An answer where nothing is dropped goes out byte for byte. A JSON answer is held
//! whole until it ends; an SSE answer event by event (other events pass as soon as they are
//! complete). Bounded: a JSON body, or one SSE event, over `mcp.max_list_bytes` is not held —
//! the agent gets a JSON-RPC error for the listing instead and the rest of the answer is
//! discarded as it arrives.
//!
//! Every definition seen is remembered ([`Definitions::observe`]): the listing is where
//! toolgate learns what a tool says it does, and sees it change.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use serde_json::{json, Value as Json};
use toolgate_policy::classify::mcp::definition::{Definitions, Lock};
use toolgate_policy::evaluate::Value;
use toolgate_policy::evaluate::{mark_listing, Policy};

use super::McpRefusal;

#[cfg(test)]
mod tests;

/// What the filter needs to decide one listing: the policy, where the definitions are
/// remembered, the catalog tool and its lock.
#[derive(Debug, Clone, Copy)]
pub struct Lister<'a> {
    pub policy: &'a Policy,
    pub definitions: &'a Definitions,
    /// The catalog tool (the MCP server).
    pub tool: &'a Arc<str>,
    pub lock: Option<&'a Lock>,
    /// Policy runs in dry-run mode: nothing is dropped.
    pub dry_run: bool,
}

/// How many tools a listing kept and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub kept: usize,
    pub dropped: usize,
}

impl Lister<'_> {
    /// Whether tool definition `tool` stays listed for the request whose input is `base`.
    /// Remembers the definition.
    pub fn keeps(&self, base: &Value, tool: &Json) -> bool {
        self.keeps_prepared(&listing_input(base), tool)
    }

    /// [`Lister::keeps`] on `base` already turned into a listing's input
    /// ([`listing_input`]): what every listed tool's input shares is set once per list.
    fn keeps_prepared(&self, base: &Value, tool: &Json) -> bool {
        let Some(name) = tool.get("name").and_then(Json::as_str) else {
            // Nothing a client could call: nothing to decide on.
            return false;
        };
        let status = self
            .definitions
            .observe_status(self.tool, name, tool, self.lock);
        if self.dry_run {
            return true;
        }
        let mut input = base.clone();
        call_action(
            &mut input,
            &format!("{}.{name}", self.tool),
            name,
            status.to_value(),
        );
        let decision = self.policy.decide(input);
        decision.allowed() || decision.approval.is_some()
    }

    /// Filter `tools` (a `result.tools` array) in place.
    pub fn filter(&self, base: &Value, tools: &mut Vec<Json>) -> Counts {
        let before = tools.len();
        let base = listing_input(base);
        tools.retain(|t| self.keeps_prepared(&base, t));
        Counts {
            kept: tools.len(),
            dropped: before - tools.len(),
        }
    }

    /// Filter the listing in JSON-RPC message (or batch) `message` answering one of `ids`.
    pub fn rewrite(&self, base: &Value, ids: &[Json], message: &mut Json) -> Counts {
        match message {
            Json::Array(items) => {
                let mut total = Counts::default();
                for item in items {
                    let c = self.rewrite(base, ids, item);
                    total.kept += c.kept;
                    total.dropped += c.dropped;
                }
                total
            }
            Json::Object(m) => {
                let ours = m.get("id").is_some_and(|id| ids.contains(id));
                match m.get_mut("result").and_then(|r| r.get_mut("tools")) {
                    Some(Json::Array(tools)) if ours => self.filter(base, tools),
                    _ => Counts::default(),
                }
            }
            _ => Counts::default(),
        }
    }

    /// A JSON body, rewritten; `None` when it stays as it is (nothing dropped, or not JSON).
    pub fn rewrite_body(&self, base: &Value, ids: &[Json], body: &[u8]) -> (Option<Bytes>, Counts) {
        let Ok(mut message) = serde_json::from_slice::<Json>(body) else {
            return (None, Counts::default());
        };
        let counts = self.rewrite(base, ids, &mut message);
        if counts.dropped == 0 {
            return (None, counts);
        }
        (serde_json::to_vec(&message).ok().map(Bytes::from), counts)
    }

    /// One complete SSE event (terminator included), rewritten when its data is a listing
    /// that loses a tool.
    pub fn rewrite_event(
        &self,
        base: &Value,
        ids: &[Json],
        event: &[u8],
    ) -> (Option<Bytes>, Counts) {
        let text = match std::str::from_utf8(event) {
            Ok(t) => t,
            Err(_) => return (None, Counts::default()),
        };
        let lines: Vec<&str> = text.lines().collect();
        let data: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            return (None, Counts::default());
        }
        let (rewritten, counts) = self.rewrite_body(base, ids, data.join("\n").as_bytes());
        let Some(json) = rewritten else {
            return (None, counts);
        };
        let mut out = String::with_capacity(json.len() + 64);
        let mut wrote_data = false;
        for line in lines.iter().filter(|l| !l.is_empty()) {
            if line.starts_with("data:") {
                if !wrote_data {
                    out.push_str("data: ");
                    out.push_str(&String::from_utf8_lossy(&json));
                    out.push('\n');
                    wrote_data = true;
                }
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');
        (Some(Bytes::from(out)), counts)
    }
}

/// The `tools/list` request's input `base` with what each listed tool's input shares:
/// `input.listing: true` and no call arguments (`input.action.attributes: {}`).
fn listing_input(base: &Value) -> Value {
    let mut input = base.clone();
    mark_listing(&mut input);
    if let Some(Ok(a)) = input
        .as_object_mut()
        .ok()
        .and_then(|map| map.get_mut(&Value::from("action")))
        .map(Value::as_object_mut)
    {
        a.insert(
            Value::from("attributes"),
            Value::from(std::collections::BTreeMap::new()),
        );
    }
    input
}

/// Turn listing input `input` ([`listing_input`]) into the input of `tools/call` of `name`
/// (action `action`, no arguments), its definition's status `definition`.
fn call_action(input: &mut Value, action: &str, name: &str, definition: Value) {
    let Ok(map) = input.as_object_mut() else {
        return;
    };
    if let Some(Ok(a)) = map
        .get_mut(&Value::from("action"))
        .map(Value::as_object_mut)
    {
        a.insert(Value::from("name"), Value::from(action));
        a.insert(Value::from("definition"), definition);
    }
    if let Some(Ok(r)) = map
        .get_mut(&Value::from("request"))
        .map(Value::as_object_mut)
    {
        // {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": name, "arguments": {}}}
        let object = |pairs: Vec<(&str, Value)>| {
            Value::from(
                pairs
                    .into_iter()
                    .map(|(k, v)| (Value::from(k), v))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
        };
        let params = object(vec![
            ("name", Value::from(name)),
            ("arguments", object(Vec::new())),
        ]);
        let call = object(vec![
            ("jsonrpc", Value::from("2.0")),
            ("method", Value::from("tools/call")),
            ("params", params),
        ]);
        r.insert(Value::from("body"), call);
    }
}

/// How the answer is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The answer's head has not arrived.
    Pending,
    /// Passed through untouched (not a 2xx JSON or SSE answer).
    Off,
    Json,
    Sse,
    /// Over the cap: the error was (or will be) sent, the rest is discarded.
    Overflowed,
}

/// The filter of one exchange's `tools/list` answer.
#[derive(Debug)]
pub struct Listing {
    /// Ids of the `tools/list` requests whose answers are filtered.
    ids: Vec<Json>,
    /// The `tools/list` request's policy input.
    input: Value,
    /// `data` of the error sent when the answer is too large (decision id, action, trace id).
    data: Json,
    mode: Mode,
    held: BytesMut,
    /// Whether the too-large error was sent.
    answered: bool,
    /// The answer is an SSE stream.
    sse: bool,
    pub counts: Counts,
}

impl Listing {
    /// A filter for the answer to a `tools/list` with id `id`, decided on `input`.
    pub fn new(input: Value, data: Json) -> Listing {
        Listing {
            ids: Vec::new(),
            input,
            data,
            mode: Mode::Pending,
            held: BytesMut::new(),
            answered: false,
            sse: false,
            counts: Counts::default(),
        }
    }

    /// Also filter the answer to request `id` (another member of the batch).
    pub fn add(&mut self, id: Json) {
        if !self.ids.contains(&id) {
            self.ids.push(id);
        }
    }

    /// Read the answer as an SSE stream (`true`) or a JSON body, as [`Listing::head`] decides
    /// from a 2xx answer's content type.
    pub fn read_as(&mut self, sse: bool) {
        self.mode = if sse { Mode::Sse } else { Mode::Json };
        self.sse = sse;
    }

    /// The answer's head: decide how to read it. A body that will change size loses its
    /// `Content-Length` (it goes out chunked); one declared over `cap`, or compressed, is
    /// refused before anything reaches the agent.
    pub fn head(&mut self, response: &mut ResponseHeader, cap: usize) -> Result<(), McpRefusal> {
        let header = |name: http::header::HeaderName| {
            response
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase)
        };
        let kind = header(http::header::CONTENT_TYPE).unwrap_or_default();
        let mode = if !response.status.is_success() {
            Mode::Off
        } else if kind.starts_with("application/json") {
            Mode::Json
        } else if kind.starts_with("text/event-stream") {
            Mode::Sse
        } else {
            Mode::Off
        };
        self.mode = mode;
        self.sse = mode == Mode::Sse;
        if mode == Mode::Off {
            return Ok(());
        }
        if header(http::header::CONTENT_ENCODING).is_some_and(|e| e != "identity") {
            return Err(McpRefusal::ListUnreadable(
                "the tools/list answer is compressed although toolgate asked for identity; a list that cannot be filtered is withheld".into(),
            ));
        }
        let declared = header(http::header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > cap) {
            return Err(McpRefusal::ListTooLarge(cap));
        }
        response.remove_header(&http::header::CONTENT_LENGTH);
        Ok(())
    }

    /// The next chunk of the answer (`None` at the end): what goes to the agent now.
    pub fn chunk(
        &mut self,
        lister: &Lister<'_>,
        chunk: Option<&[u8]>,
        end: bool,
        cap: usize,
    ) -> Option<Bytes> {
        match self.mode {
            Mode::Pending | Mode::Off => chunk.map(Bytes::copy_from_slice),
            Mode::Overflowed => self.overflowed(end),
            Mode::Json => {
                if let Some(c) = chunk {
                    self.held.extend_from_slice(c);
                }
                if self.held.len() > cap {
                    self.held = BytesMut::new();
                    self.mode = Mode::Overflowed;
                    return self.overflowed(end);
                }
                if !end {
                    return None;
                }
                let body = std::mem::take(&mut self.held).freeze();
                let (rewritten, counts) = lister.rewrite_body(&self.input, &self.ids, &body);
                self.counts = counts;
                Some(rewritten.unwrap_or(body))
            }
            Mode::Sse => {
                if let Some(c) = chunk {
                    self.held.extend_from_slice(c);
                }
                let mut out = BytesMut::new();
                while let Some(len) = event_end(&self.held) {
                    let event = self.held.split_to(len).freeze();
                    let (rewritten, counts) = lister.rewrite_event(&self.input, &self.ids, &event);
                    self.counts.kept += counts.kept;
                    self.counts.dropped += counts.dropped;
                    out.extend_from_slice(&rewritten.unwrap_or(event));
                }
                if self.held.len() > cap {
                    self.held = BytesMut::new();
                    self.mode = Mode::Overflowed;
                    out.extend_from_slice(&self.overflowed(false).unwrap_or_default());
                } else if end && !self.held.is_empty() {
                    // An unterminated last event: passed as it came.
                    out.extend_from_slice(&std::mem::take(&mut self.held));
                }
                (!out.is_empty()).then(|| out.freeze())
            }
        }
    }

    /// In overflow: the error once (JSON: at the end, SSE: at once), nothing else.
    fn overflowed(&mut self, end: bool) -> Option<Bytes> {
        if self.answered || (!self.sse && !end) {
            return None;
        }
        self.answered = true;
        let errors: Vec<Json> = self
            .ids
            .iter()
            .map(|id| {
                json!({"jsonrpc": "2.0", "id": id, "error": {
                    "code": super::REFUSED,
                    "message": "the tools/list answer is larger than toolgate filters (mcp.max_list_bytes); a list that cannot be filtered is withheld",
                    "data": self.data,
                }})
            })
            .collect();
        let body = match errors.as_slice() {
            [one] => one.to_string(),
            _ => Json::Array(errors).to_string(),
        };
        Some(Bytes::from(if self.sse {
            format!("event: message\ndata: {body}\n\n")
        } else {
            body
        }))
    }
}

/// Length of the first complete SSE event in `buf` (through its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The pipeline's hooks, one per phase.
///
/// Before the request goes out: a listing must come back uncompressed to be filtered.
pub fn ask_identity(req: &mut pingora::http::RequestHeader, x: &crate::pipeline::Exchange) {
    if x.listing.is_some() {
        let _ = req.insert_header(http::header::ACCEPT_ENCODING, "identity");
    }
}

/// When the answer's head arrives: how the listing will be read (see [`Listing::head`]).
pub fn head(
    response: &mut ResponseHeader,
    x: &mut crate::pipeline::Exchange,
) -> Result<(), crate::problem::Refusal> {
    let cap = x
        .snapshot
        .as_ref()
        .map_or(toolgate_policy::config::DEFAULT_MAX_LIST_BYTES, |s| {
            s.config.mcp.max_list_bytes
        });
    match x.listing.as_mut() {
        Some(listing) => listing.head(response, cap).map_err(Into::into),
        None => Ok(()),
    }
}

/// For each chunk of the answer: the listing filtered, before the credential scrubber sees it.
pub fn body(
    gw: &crate::gateway::Gateway,
    body: &mut Option<Bytes>,
    end: bool,
    x: &mut crate::pipeline::Exchange,
) {
    let (Some(listing), Some(snapshot), Some(tool)) =
        (x.listing.as_mut(), x.snapshot.as_ref(), x.tool.as_ref())
    else {
        return;
    };
    let config = &snapshot.config;
    let lister = Lister {
        policy: &snapshot.policy,
        definitions: &gw.definitions,
        tool,
        lock: config.mcp.locks.get(&**tool).map(|l| &**l),
        dry_run: config.policy.mode == toolgate_policy::config::PolicyMode::DryRun,
    };
    let before = listing.counts;
    let chunk = body.take();
    *body = listing.chunk(&lister, chunk.as_deref(), end, config.mcp.max_list_bytes);
    let dropped = listing.counts.dropped - before.dropped;
    if dropped > 0 {
        tracing::debug!(decision_id = %x.decision_id, dropped, kept = listing.counts.kept, "tools/list filtered by policy");
    }
}
