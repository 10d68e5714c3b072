//! What the demo prints: the decisions table, and the task's chain as an indented timeline
//! rebuilt from the spans toolgate exported (each action under the one it links to). Also the
//! checks that make the demo fail loudly if the chain is not what it should be.

use std::collections::HashMap;
use std::fmt::Write as _;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::tools::Seen;
use super::Step;

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

/// The task's spans, in chain order.
pub fn chain(spans: &[Span], task: &str) -> Vec<Span> {
    let mut chain: Vec<Span> = spans
        .iter()
        .filter(|s| text(&s.attributes, "toolgate.task.id") == task)
        .cloned()
        .collect();
    chain.sort_by_key(|s| int(&s.attributes, "toolgate.chain.seq"));
    chain
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
    for span in chain {
        let a = &span.attributes;
        let level = span
            .links
            .first()
            .and_then(|l| depth.get(&l.span_id))
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
        if let Some(link) = span.links.first() {
            notes.push(format!("links to span {}", hex(&link.span_id)));
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
    seen: &[Seen],
) -> Vec<String> {
    let mut problems = Vec::new();
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
        if int(a, "toolgate.chain.seq") != Some(i as i64 + 1) {
            problems.push(format!("step {}: seq is not {}", i + 1, i + 1));
        }
        let linked = span.links.first().map(|l| l.span_id.clone());
        let previous = i
            .checked_sub(1)
            .and_then(|p| chain.get(p))
            .map(|p| p.span_id.clone());
        if linked != previous {
            problems.push(format!("step {}: does not link to the step before", i + 1));
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
