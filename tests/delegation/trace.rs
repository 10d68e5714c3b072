//! A handoff is one trace: the receiving toolgate's spans are children of the delegating
//! action's span, in its trace, and carry the delegation chain (and, once it ended, the end).

use serde_json::json;

use crate::otlp::{self, Receiver};
use crate::servers::Sts;
use crate::support::{problem, ToolServer};
use crate::{new_key, task_token, Agent, Setup, AGENT_A, AGENT_B};

#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_is_one_trace_across_both_toolgates() {
    let store = Receiver::http().await;
    let tool = ToolServer::http().await;
    let sts = Sts::start().await;
    let (_, orchestrator) = new_key();
    let setup = |id, trusts| Setup {
        id,
        tool: &tool,
        sts: &sts,
        orchestrator: &orchestrator,
        trusts,
        max_depth: 1,
        extra: "",
        otlp: Some(store.endpoint()),
    };
    let a = Agent::start(setup(AGENT_A, Vec::new()));
    let b = Agent::start(setup(AGENT_B, vec![a.trust()]));
    let root = task_token(&orchestrator, "T-3", AGENT_A, 600);
    assert_eq!(a.read_ticket(&root, "SUP-3").await.status(), 200);
    let answer: serde_json::Value = a
        .delegate(&root, json!({ "to": AGENT_B, "actions": ["ticket.read"] }))
        .await
        .json()
        .await
        .unwrap();
    let delegation = answer["token"].as_str().unwrap();
    assert_eq!(b.read_ticket(delegation, "SUP-3").await.status(), 200);
    assert_eq!(b.close_ticket(delegation, "SUP-3").await.status(), 403);
    let ended = crate::support::operator(b.tg.admin, "POST", "/v1/tasks/T-3/end", None);
    assert_eq!(ended.status, 200, "{}", ended.body);
    let (status, _) = problem(b.read_ticket(delegation, "SUP-3").await).await;
    assert_eq!(status, 403);

    let spans = store.wait_for(5).await;
    let named = |name: &str| -> Vec<&otlp::Received> {
        spans.iter().filter(|s| s.span.name == name).collect()
    };
    let delegate = named("task.delegate");
    assert_eq!(delegate.len(), 1, "{spans:#?}");
    let delegate = &delegate[0].span;
    let trace = delegate.trace_id.clone();
    assert_eq!(hex(&trace), answer["trace_id"].as_str().unwrap());
    let attrs = &delegate.attributes;
    assert_eq!(otlp::string(attrs, "toolgate.delegation.to"), Some(AGENT_B));
    assert_eq!(
        otlp::string(attrs, "toolgate.credential.kind"),
        Some("delegation")
    );
    assert_eq!(
        otlp::string(attrs, "toolgate.credential.id"),
        answer["jti"].as_str()
    );
    assert_eq!(otlp::string(attrs, "toolgate.decision"), Some("allow"));

    // B's three actions: in A's trace, under A's delegate span, linked to each other.
    let of_b: Vec<&otlp::Received> = spans
        .iter()
        .filter(|s| otlp::string(&s.span.attributes, "toolgate.agent.id") == Some(AGENT_B))
        .collect();
    assert_eq!(of_b.len(), 3, "{spans:#?}");
    for s in &of_b {
        assert_eq!(s.span.trace_id, trace, "one trace for the whole task");
        assert_eq!(s.span.parent_span_id, delegate.span_id);
        let attrs = &s.span.attributes;
        assert_eq!(otlp::int(attrs, "toolgate.delegation.depth"), Some(1));
        let agents = match otlp::attr(attrs, "toolgate.delegation.agents") {
            Some(otlp_value) => format!("{otlp_value:?}"),
            None => panic!("no toolgate.delegation.agents on {s:#?}"),
        };
        assert!(
            agents.contains(AGENT_A) && agents.contains(AGENT_B),
            "{agents}"
        );
    }
    let refused_after_end = of_b
        .iter()
        .find(|s| otlp::string(&s.span.attributes, "toolgate.task.ended_by").is_some())
        .unwrap_or_else(|| panic!("no span with the task's end: {of_b:#?}"));
    assert_eq!(
        otlp::string(&refused_after_end.span.attributes, "toolgate.task.ended_by"),
        Some("operator")
    );
    // A's read is in the same trace too.
    let a_read = spans
        .iter()
        .find(|s| {
            s.span.name == "ticket.read"
                && otlp::string(&s.span.attributes, "toolgate.agent.id") == Some(AGENT_A)
        })
        .unwrap();
    assert_eq!(a_read.span.trace_id, trace);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
