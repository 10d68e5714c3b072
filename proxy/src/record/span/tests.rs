use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::Value;
use toolgate_policy::chain::SpanRef;
use toolgate_policy::evaluate::Effect;

use super::*;
use crate::identify::TraceParent;
use crate::record::trace::Target;

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
