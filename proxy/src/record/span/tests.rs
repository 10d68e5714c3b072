use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::Value;
use toolgate_policy::chain::SpanRef;
use toolgate_policy::evaluate::Effect;

use super::*;
use crate::identify::TraceParent;
use crate::record::trace::{Mcp, Target};

fn end(status: u16) -> End<'static> {
    End {
        ended: SystemTime::now(),
        status,
        method: "POST",
        agent: "spiffe://t/agent",
        policy_revision: "rev1",
        error: None,
    }
}

fn allowed() -> Exchange {
    let mut x = Exchange::new();
    x.decision_id = "d-1".into();
    x.task_id = "T-1".into();
    x.tool = Some(Arc::from("jira"));
    x.action = Arc::from("ticket.close");
    x.effect = Some(Effect::Allow);
    x.reason = "read earlier".into();
    x.seq = Some(2);
    x.eval_time = Some(Duration::from_micros(7));
    x.trace.evaluated_at = Some(x.started);
    x.upstream_sent = Some(Instant::now());
    x.trace.target = Some(Target {
        scheme: "https",
        host: "jira.example.com".into(),
        port: 443,
        path: "/rest/api/3/issue/SUP-12/transitions".into(),
    });
    x
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

const MINTED: Credential<'static> = Credential {
    name: "jira-jwt",
    kind: "jwt",
    id: Some("jti-42"),
};

#[test]
fn an_allowed_action_is_a_client_span_with_typed_attributes() {
    let x = allowed();
    let span = action_span(&x, Some(&MINTED), &end(200));
    assert_eq!(span.name, "ticket.close");
    assert_eq!(span.span_kind, SpanKind::Client);
    assert_eq!(span.status, Status::Unset);
    assert_eq!(span.span_context.trace_id().to_bytes(), x.trace.trace_id);
    assert_eq!(span.span_context.span_id().to_bytes(), x.span_id);
    assert!(!span.parent_span_is_remote);
    assert_eq!(attr(&span, "toolgate.chain.seq"), Some(&Value::I64(2)));
    assert_eq!(attr(&span, "server.port"), Some(&Value::I64(443)));
    assert_eq!(
        attr(&span, "http.response.status_code"),
        Some(&Value::I64(200))
    );
    assert_eq!(
        attr(&span, "toolgate.decision").map(Value::as_str),
        Some("allow".into())
    );
    assert_eq!(
        attr(&span, "toolgate.credential.id").map(Value::as_str),
        Some("jti-42".into())
    );
    assert_eq!(attr(&span, "error.type"), None);
    let names: Vec<&str> = span.events.iter().map(|e| e.name.as_ref()).collect();
    assert_eq!(names, ["policy evaluated", "credential issued"]);
    let issued = &span.events.events[1];
    let keys: Vec<&str> = issued.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "toolgate.credential.name",
            "toolgate.credential.kind",
            "toolgate.credential.id"
        ]
    );
    let evaluated = &span.events.events[0];
    assert!(evaluated.attributes.iter().any(|kv| kv.key.as_str()
        == "toolgate.policy.eval_duration_us"
        && kv.value == Value::I64(7)));
    assert!(evaluated.timestamp >= span.start_time && evaluated.timestamp <= span.end_time);
}

#[test]
fn a_denied_action_has_error_status_with_the_reason_and_no_credential_event() {
    let mut x = allowed();
    x.effect = Some(Effect::Deny);
    x.reason = "payment of 5000 exceeds the limit of 100".into();
    x.refused = Some(403);
    x.failure = Some(x.reason.clone());
    x.upstream_sent = None;
    let span = action_span(&x, None, &end(403));
    assert_eq!(
        span.status,
        Status::error("payment of 5000 exceeds the limit of 100")
    );
    assert_eq!(
        attr(&span, "error.type").map(Value::as_str),
        Some("403".into())
    );
    assert_eq!(
        span.events
            .iter()
            .map(|e| e.name.as_ref())
            .collect::<Vec<_>>(),
        ["policy evaluated"]
    );
}

#[test]
fn a_refused_request_before_policy_is_a_reject() {
    let mut x = Exchange::new();
    x.refused = Some(400);
    x.failure = Some("path has a dot segment".into());
    let span = action_span(&x, None, &end(400));
    assert_eq!(span.name, "unknown");
    assert_eq!(
        attr(&span, "toolgate.decision").map(Value::as_str),
        Some("reject".into())
    );
    assert_eq!(span.status, Status::error("path has a dot segment"));
    assert_eq!(attr(&span, "toolgate.chain.seq"), None);
    assert!(span.links.is_empty());
}

#[test]
fn the_span_links_to_the_previous_action_and_is_a_child_of_the_agents_span() {
    let mut x = allowed();
    x.trace.parent = Some(TraceParent {
        trace_id: [7; 16],
        parent_id: [8; 8],
        flags: 1,
    });
    x.trace.trace_id = [7; 16];
    x.trace.previous = Some(SpanRef {
        trace_id: [7; 16],
        span_id: [9; 8],
    });
    let span = action_span(&x, None, &end(200));
    assert_eq!(span.parent_span_id.to_bytes(), [8; 8]);
    assert!(span.parent_span_is_remote);
    let link = &span.links.links[0];
    assert_eq!(link.span_context.span_id().to_bytes(), [9; 8]);
    assert!(link
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "toolgate.chain.seq" && kv.value == Value::I64(1)));
}

#[test]
fn a_dry_run_would_deny_is_marked_and_flagged() {
    let mut x = allowed();
    x.effect = Some(Effect::Deny);
    x.dry_run = true;
    let span = action_span(&x, None, &end(200));
    assert_eq!(attr(&span, "toolgate.dry_run"), Some(&Value::Bool(true)));
    assert_eq!(
        span.status,
        Status::error("would deny (dry-run): read earlier")
    );
}

#[test]
fn a_tool_error_after_an_allow_is_an_error_span() {
    let x = allowed();
    let span = action_span(&x, None, &end(503));
    assert_eq!(span.status, Status::error("the tool answered 503"));
}

#[test]
fn long_action_names_are_cut_at_a_char_boundary() {
    let mut x = allowed();
    x.action = Arc::from(format!("crm.{}", "é".repeat(100)));
    let span = action_span(&x, None, &end(200));
    assert!(span.name.len() <= MAX_NAME_BYTES);
    assert!(span.name.starts_with("crm.é"));
}

fn text(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

fn mcp(action: &str, method: &str, id: Option<&str>, tool: Option<&str>) -> Mcp {
    Mcp {
        action: Arc::from(action),
        method: Some(method.to_string()),
        request_id: id.map(str::to_string),
        tool: tool.map(str::to_string),
        session: Some("191c4850af6c49e08843a3f6c80e5046".into()),
        protocol_version: Some("2025-11-25".into()),
    }
}

#[test]
fn an_http_action_is_a_genai_tool_execution_named_after_the_action() {
    let x = allowed();
    let span = action_span(&x, Some(&MINTED), &end(200));
    assert_eq!(
        text(&span, "gen_ai.operation.name").as_deref(),
        Some("execute_tool")
    );
    assert_eq!(
        text(&span, "gen_ai.tool.name").as_deref(),
        Some("ticket.close")
    );
    assert_eq!(
        text(&span, "gen_ai.agent.id").as_deref(),
        Some("spiffe://t/agent")
    );
    assert_eq!(
        text(&span, "openinference.span.kind").as_deref(),
        Some("TOOL")
    );
    // No JSON-RPC: no call id and no MCP attributes.
    for key in [
        "gen_ai.tool.call.id",
        "mcp.method.name",
        "jsonrpc.request.id",
        "mcp.session.id",
    ] {
        assert_eq!(attr(&span, key), None, "{key}");
    }
    // toolgate's own attributes stay.
    assert_eq!(
        text(&span, "toolgate.action").as_deref(),
        Some("ticket.close")
    );
}

#[test]
fn an_mcp_tool_call_carries_the_mcp_conventions_and_its_tool_and_call_id() {
    let mut x = allowed();
    x.action = Arc::from("crm.lookup_customer");
    x.trace.mcp = vec![mcp(
        "crm.lookup_customer",
        "tools/call",
        Some("7"),
        Some("lookup_customer"),
    )];
    let span = action_span(&x, None, &end(200));
    for (key, want) in [
        ("gen_ai.operation.name", "execute_tool"),
        ("gen_ai.tool.name", "lookup_customer"),
        ("gen_ai.tool.call.id", "7"),
        ("mcp.method.name", "tools/call"),
        ("jsonrpc.request.id", "7"),
        ("mcp.session.id", "191c4850af6c49e08843a3f6c80e5046"),
        ("mcp.protocol.version", "2025-11-25"),
        ("openinference.span.kind", "TOOL"),
    ] {
        assert_eq!(text(&span, key).as_deref(), Some(want), "{key}");
    }
}

#[test]
fn an_mcp_message_that_is_not_a_tool_call_has_no_genai_operation() {
    let mut x = allowed();
    x.action = Arc::from("crm.mcp.tools_list");
    x.trace.mcp = vec![mcp("crm.mcp.tools_list", "tools/list", Some("1"), None)];
    let span = action_span(&x, None, &end(200));
    assert_eq!(attr(&span, "gen_ai.operation.name"), None);
    assert_eq!(attr(&span, "gen_ai.tool.name"), None);
    assert_eq!(
        text(&span, "mcp.method.name").as_deref(),
        Some("tools/list")
    );
    assert_eq!(text(&span, "jsonrpc.request.id").as_deref(), Some("1"));
    assert_eq!(
        text(&span, "gen_ai.agent.id").as_deref(),
        Some("spiffe://t/agent")
    );
}

#[test]
fn a_batch_span_describes_the_member_it_is_logged_under() {
    let mut x = allowed();
    x.action = Arc::from("crm.delete_customer");
    x.trace.mcp = vec![
        mcp(
            "crm.lookup_customer",
            "tools/call",
            Some("1"),
            Some("lookup_customer"),
        ),
        mcp(
            "crm.delete_customer",
            "tools/call",
            Some("2"),
            Some("delete_customer"),
        ),
    ];
    let span = action_span(&x, None, &end(200));
    assert_eq!(
        text(&span, "gen_ai.tool.name").as_deref(),
        Some("delete_customer")
    );
    assert_eq!(text(&span, "gen_ai.tool.call.id").as_deref(), Some("2"));
}

#[test]
fn no_argument_value_reaches_the_span() {
    use toolgate_policy::classify::mcp::{Member, Rpc};
    use toolgate_policy::classify::Classification;
    let message = serde_json::json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": { "name": "lookup_customer", "arguments": { "customer": "ACME-SECRET-ARG" } }
    });
    let rpc = Rpc {
        batch: false,
        members: vec![Member {
            id: Some(serde_json::json!(7)),
            method: Some(Arc::from("tools/call")),
            classification: Classification {
                tool: Some(0),
                action: Arc::from("crm.lookup_customer"),
                attributes: Vec::new(),
            },
            message,
        }],
        task: None,
        traceparent: None,
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("mcp-session-id", "s-1".parse().unwrap());
    headers.insert(
        "mcp-protocol-version",
        http::HeaderValue::from_bytes(b"\xff2025").unwrap(),
    );
    let mut x = allowed();
    x.action = Arc::from("crm.lookup_customer");
    x.trace.mcp = Mcp::of(Some(&rpc), &headers);
    assert_eq!(x.trace.mcp.len(), 1);
    assert_eq!(
        x.trace.mcp[0].protocol_version, None,
        "non-text is left off"
    );
    let span = action_span(&x, None, &end(200));
    assert_eq!(text(&span, "gen_ai.tool.call.id").as_deref(), Some("7"));
    assert_eq!(text(&span, "mcp.session.id").as_deref(), Some("s-1"));
    for kv in &span.attributes {
        assert!(
            !kv.value.as_str().contains("ACME-SECRET-ARG"),
            "{} carries an argument",
            kv.key
        );
    }
}

#[test]
fn an_action_of_a_task_is_a_child_of_the_task_root_unless_the_agent_sent_traceparent() {
    let x = allowed();
    let span = action_span_under(&x, None, &end(200), Some([5; 8]));
    assert_eq!(span.parent_span_id.to_bytes(), [5; 8]);
    assert!(!span.parent_span_is_remote);
    let mut x = allowed();
    x.trace.parent = Some(TraceParent {
        trace_id: [7; 16],
        parent_id: [8; 8],
        flags: 1,
    });
    let span = action_span_under(&x, None, &end(200), Some([5; 8]));
    assert_eq!(span.parent_span_id.to_bytes(), [8; 8]);
}

#[test]
fn a_task_root_span_names_the_task_and_counts_its_outcomes() {
    use crate::record::trace::roots::{Counted, Roots, Step};
    use toolgate_policy::chain::Outcome;
    let roots = Roots::new(4, Duration::from_secs(60));
    let started = SystemTime::now();
    let labels: Vec<Arc<str>> = vec![Arc::from("pii")];
    let step = Step {
        trace_id: [3; 16],
        task: "T-42",
        agent: "spiffe://t/agent",
        started,
        ended: started + Duration::from_millis(5),
    };
    let entered = roots
        .enter(
            &step,
            [
                Counted {
                    decision: "allow",
                    outcome: Some(Outcome::Response(200)),
                    labels: &labels,
                },
                Counted {
                    decision: "deny",
                    outcome: Some(Outcome::Refused(403)),
                    labels: &[],
                },
            ],
        )
        .unwrap();
    let root = roots.drain().pop().unwrap();
    let span = task_span(&root, Closed::Idle);
    assert_eq!(span.name, "task T-42");
    assert_eq!(span.span_kind, SpanKind::Internal);
    assert_eq!(span.span_context.span_id().to_bytes(), entered.span_id);
    assert_eq!(span.span_context.trace_id().to_bytes(), [3; 16]);
    assert_eq!(span.parent_span_id, SpanId::INVALID);
    assert_eq!(span.start_time, started);
    assert_eq!(span.end_time, started + Duration::from_millis(5));
    assert_eq!(text(&span, "toolgate.task.id").as_deref(), Some("T-42"));
    assert_eq!(
        text(&span, "gen_ai.agent.id").as_deref(),
        Some("spiffe://t/agent")
    );
    assert_eq!(
        text(&span, "openinference.span.kind").as_deref(),
        Some("AGENT")
    );
    assert_eq!(attr(&span, "toolgate.task.actions"), Some(&Value::I64(2)));
    assert_eq!(
        attr(&span, "toolgate.task.decisions.allow"),
        Some(&Value::I64(1))
    );
    assert_eq!(
        attr(&span, "toolgate.task.decisions.deny"),
        Some(&Value::I64(1))
    );
    assert_eq!(
        attr(&span, "toolgate.task.outcomes.refused"),
        Some(&Value::I64(1))
    );
    assert_eq!(attr(&span, "toolgate.task.decisions.error"), None);
    assert_eq!(
        attr(&span, "toolgate.task.labels"),
        Some(&Value::Array(
            vec![opentelemetry::StringValue::from("pii")].into()
        ))
    );
    assert_eq!(text(&span, "toolgate.task.closed").as_deref(), Some("idle"));
}
