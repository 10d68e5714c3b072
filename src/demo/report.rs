//! What the demo prints: the decisions table, and the task's chain as an indented timeline
//! rebuilt from the spans both toolgates exported (each action under the one it links to, the
//! second agent's first action under the handoff it came from). Also the checks that make the
//! demo fail loudly if the chain is not what it should be.

use std::collections::HashMap;
use std::fmt::Write as _;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::tools::Seen;
use super::{Step, Who};

/// What the agent got back for one step.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub body: Vec<u8>,
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text<'a>(attributes: &'a [KeyValue], key: &str) -> &'a str {
    match attr(attributes, key) {
        Some(Value::StringValue(s)) => s,
        _ => "",
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The task's action spans (not its root), from both agents, in the order they started
/// (each agent's in its chain order: the script's steps run one after another).
pub fn chain(spans: &[Span], task: &str) -> Vec<Span> {
    let mut chain: Vec<Span> = spans
        .iter()
        .filter(|s| text(&s.attributes, "toolgate.task.id") == task)
        .filter(|s| int(&s.attributes, "toolgate.chain.seq").is_some())
        .cloned()
        .collect();
    chain.sort_by_key(|s| s.start_time_unix_nano);
    chain
}

/// The line saying what a handoff step (`step`) got back.
pub fn handoff(step: usize, outcome: &Outcome) -> String {
    let answer: serde_json::Value = serde_json::from_slice(&outcome.body).unwrap_or_default();
    let field = |k: &str| match answer.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    format!(
        "After step {step} the first agent's toolgate signed a delegation token for {} (task {}, actions {}, depth {}, jti {}),\nwhich the billing agent sends to its own toolgate as x-toolgate-task-token.\n",
        field("to"),
        field("task"),
        field("actions"),
        field("depth"),
        field("jti"),
    )
}

/// The task's root span (`task <id>`), once toolgate exported it.
pub fn root(spans: &[Span], task: &str) -> Option<Span> {
    spans
        .iter()
        .find(|s| {
            s.name == format!("task {task}") && text(&s.attributes, "toolgate.task.id") == task
        })
        .cloned()
}

/// One line for the task's root span: its id, and what its actions came to.
pub fn root_line(root: &Span) -> String {
    let a = &root.attributes;
    let counts: Vec<String> = ["allow", "deny", "error"]
        .iter()
        .filter_map(|d| int(a, &format!("toolgate.task.decisions.{d}")).map(|n| format!("{n} {d}")))
        .collect();
    format!(
        "  {}  span {} — {} actions ({}), the parent of the first agent's spans; closed at {}\n",
        root.name,
        hex(&root.span_id),
        int(a, "toolgate.task.actions").unwrap_or(0),
        counts.join(", "),
        text(a, "toolgate.task.closed"),
    )
}

/// The decisions table: one row per step, decision and reason as the spans report them.
pub fn table(script: &[Step], outcomes: &[Outcome], chain: &[Span]) -> String {
    let mut rows = vec![[
        "#".to_string(),
        "the agent".to_string(),
        "action".to_string(),
        "decision".to_string(),
        "status".to_string(),
        "reason".to_string(),
    ]];
    for (i, (step, outcome)) in script.iter().zip(outcomes).enumerate() {
        let span = chain.get(i);
        let a = span.map(|s| s.attributes.as_slice()).unwrap_or_default();
        // A request waiting for a human shows as held.
        let decision = match text(a, "toolgate.approval.status") {
            "pending" => "held",
            _ => text(a, "toolgate.decision"),
        };
        rows.push([
            (i + 1).to_string(),
            step.says.to_string(),
            text(a, "toolgate.action").to_string(),
            decision.to_string(),
            outcome.status.to_string(),
            text(a, "toolgate.reason").to_string(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::from(" ");
        for (cell, w) in row.iter().zip(widths) {
            let _ = write!(line, " {cell:<w$} ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn micros(nanos: u64) -> String {
    let us = nanos / 1_000;
    if us >= 1_000 {
        format!("{}.{} ms", us / 1_000, (us % 1_000) / 100)
    } else {
        format!("{us} µs")
    }
}

/// The chain as a timeline: each span indented one step under the span it links to.
pub fn timeline(chain: &[Span]) -> String {
    let mut out = String::new();
    let Some(first) = chain.first() else {
        return "  (no spans received)\n".to_string();
    };
    let start = first.start_time_unix_nano;
    let mut depth: HashMap<Vec<u8>, usize> = HashMap::new();
    let first_agent = text(&first.attributes, "toolgate.agent.id").to_string();
    for span in chain {
        let a = &span.attributes;
        // Under the span it links to (the task's previous action), else under its parent
        // when that is in the chain (a delegate's first action, under the handoff).
        let level = span
            .links
            .first()
            .map(|l| &l.span_id)
            .or(Some(&span.parent_span_id))
            .and_then(|id| depth.get(id))
            .map(|d| d + 1)
            .unwrap_or(0);
        depth.insert(span.span_id.clone(), level);
        let indent = "   ".repeat(level);
        let branch = if level == 0 { "●" } else { "└▶" };
        let status = int(a, "http.response.status_code")
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "  {indent}{branch} +{:<9} {} [seq {}] {} {status} ({})  span {}",
            micros(span.start_time_unix_nano.saturating_sub(start)),
            span.name,
            int(a, "toolgate.chain.seq").unwrap_or(0),
            text(a, "toolgate.decision"),
            micros(
                span.end_time_unix_nano
                    .saturating_sub(span.start_time_unix_nano)
            ),
            hex(&span.span_id),
        );
        let pad = format!("  {indent}{}", " ".repeat(branch.chars().count() + 1));
        let _ = writeln!(out, "{pad}{}", text(a, "toolgate.reason"));
        let mut notes = Vec::new();
        for event in &span.events {
            let e = &event.attributes;
            match event.name.as_str() {
                "policy evaluated" => notes.push(format!(
                    "policy evaluated in {} µs",
                    int(e, "toolgate.policy.eval_duration_us").unwrap_or(0)
                )),
                "credential issued" => {
                    let id = text(e, "toolgate.credential.id");
                    notes.push(format!(
                        "credential issued: {} ({}{})",
                        text(e, "toolgate.credential.name"),
                        text(e, "toolgate.credential.kind"),
                        if id.is_empty() {
                            String::new()
                        } else {
                            format!(", id {id}")
                        }
                    ));
                }
                other => notes.push(other.to_string()),
            }
        }
        match (
            text(a, "toolgate.approval.status"),
            text(a, "toolgate.approval.approver"),
        ) {
            ("", _) => {}
            ("pending", _) => notes.push(format!(
                "held for approval {}",
                text(a, "toolgate.approval.id")
            )),
            (status, by) => notes.push(format!(
                "approval {} {status}, approved by {by}",
                text(a, "toolgate.approval.id")
            )),
        }
        let to = text(a, "toolgate.delegation.to");
        if !to.is_empty() {
            notes.push(format!("handed on to {to}"));
        }
        let agent = text(a, "toolgate.agent.id");
        if agent != first_agent {
            notes.push(format!(
                "by {agent}, delegation depth {}",
                int(a, "toolgate.delegation.depth").unwrap_or(0)
            ));
        }
        match span.links.first() {
            Some(link) => notes.push(format!("links to span {}", hex(&link.span_id))),
            None if depth.contains_key(&span.parent_span_id) => {
                notes.push(format!("child of span {}", hex(&span.parent_span_id)))
            }
            None => {}
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "{pad}{}", notes.join(" · "));
        }
    }
    out
}

/// Everything that is not as the demo promises; empty when the demo succeeded.
pub fn problems(
    script: &[Step],
    outcomes: &[Outcome],
    chain: &[Span],
    root: Option<&Span>,
    seen: &[Seen],
) -> Vec<String> {
    let mut problems = Vec::new();
    match root {
        None => problems.push("no root span for the task".into()),
        Some(root) => {
            // The root is the first agent's (its toolgate's ledger): the billing agent's
            // actions run under the delegation token's trace context, below the handoff.
            let own = || {
                script
                    .iter()
                    .zip(chain)
                    .filter(|(step, _)| step.by == Who::Triage)
            };
            if own().any(|(_, s)| s.parent_span_id != root.span_id) {
                problems.push("not every action is a child of the task's root span".into());
            }
            let counted = own().count() as i64;
            if int(&root.attributes, "toolgate.task.actions") != Some(counted) {
                problems.push("the task's root span does not count every action".into());
            }
        }
    }
    for span in chain {
        let a = &span.attributes;
        if text(a, "gen_ai.operation.name") != "execute_tool"
            || text(a, "openinference.span.kind") != "TOOL"
        {
            problems.push(format!("{}: not a GenAI tool execution span", span.name));
        }
    }
    // An allowed MCP call is answered by the (fake) server in JSON-RPC, for its request id.
    for (i, (step, outcome)) in script.iter().zip(outcomes).enumerate() {
        let Ok(call) = serde_json::from_str::<serde_json::Value>(step.body) else {
            continue;
        };
        if call.get("jsonrpc").is_none() || step.decision != "allow" {
            continue;
        }
        let reply: serde_json::Value = serde_json::from_slice(&outcome.body).unwrap_or_default();
        if reply.get("id") != call.get("id") || reply.get("result").is_none() {
            problems.push(format!(
                "step {}: the MCP call got no JSON-RPC result for its id",
                i + 1
            ));
        }
    }
    if chain.len() != script.len() {
        problems.push(format!(
            "{} steps but {} spans received for the task",
            script.len(),
            chain.len()
        ));
    }
    let traces: std::collections::BTreeSet<String> =
        chain.iter().map(|s| hex(&s.trace_id)).collect();
    if traces.len() > 1 {
        problems.push(format!("the task's spans are in {} traces", traces.len()));
    }
    let traceparents: Vec<&str> = seen
        .iter()
        .filter_map(|s| s.traceparent.as_deref())
        .collect();
    // Each agent's actions are a chain of their own (its toolgate's ledger), linked in order;
    // the second agent's first action is a child of the handoff that gave it the task.
    let mut last: HashMap<Who, (i64, Vec<u8>)> = HashMap::new();
    let mut handoff: Option<Vec<u8>> = None;
    for (i, (step, span)) in script.iter().zip(chain).enumerate() {
        let a = &span.attributes;
        let (action, decision) = (text(a, "toolgate.action"), text(a, "toolgate.decision"));
        if (action, decision) != (step.action, step.decision) {
            problems.push(format!(
                "step {}: wanted {} {}, got {action} {decision}",
                i + 1,
                step.action,
                step.decision
            ));
        }
        let before = last.get(&step.by);
        let seq = before.map(|(s, _)| s + 1).unwrap_or(1);
        if int(a, "toolgate.chain.seq") != Some(seq) {
            problems.push(format!("step {}: seq is not {seq}", i + 1));
        }
        let linked = span.links.first().map(|l| l.span_id.clone());
        if linked != before.map(|(_, id)| id.clone()) {
            problems.push(format!("step {}: does not link to the step before", i + 1));
        }
        if step.by == Who::Billing
            && before.is_none()
            && handoff.as_ref() != Some(&span.parent_span_id)
        {
            problems.push(format!(
                "step {}: the second agent's first action is not under the handoff",
                i + 1
            ));
        }
        last.insert(step.by, (seq, span.span_id.clone()));
        if step.action == toolgate_policy::delegation::ACTION {
            handoff = Some(span.span_id.clone());
            continue;
        }
        if decision == "allow" {
            let parent = format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id));
            if !traceparents.contains(&parent.as_str()) {
                problems.push(format!(
                    "step {}: the tool did not get toolgate's span as traceparent",
                    i + 1
                ));
            }
        }
    }
    if seen.iter().any(|s| s.agent_credential) {
        problems.push("the agent's own credential reached a tool".into());
    }
    problems
}
