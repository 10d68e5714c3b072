//! mcp_jsonrpc: arbitrary bytes as the body of an MCP POST (`POST http://crm.example.com/mcp`,
//! `application/json`) through `prepare::finish` as the proxy sends it, and any JSON value
//! through `classify::mcp::classify` directly — single messages, batches, notifications and
//! responses.
//!
//! Input: the body. Besides "no panic": each member's action, attributes and id are what
//! DESIGN.md §4 says (`tools/call` → `crm.<params.name>` with `params.arguments`; another
//! method → `crm.mcp.<method with / as _>` with `params` but `_meta`; a response →
//! `crm.mcp.response` with no id to answer), a batch holds 1 to 64 members, and the request's
//! classification and body are its first member's (the whole batch as body for a batch).
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;
use toolgate_fuzz::invariants;
use toolgate_policy::classify::mcp::{self, Rpc};
use toolgate_policy::{body, prepare};

const TARGET: &[u8] = b"http://crm.example.com/mcp";

fn crm() -> usize {
    static CRM: OnceLock<usize> = OnceLock::new();
    *CRM.get_or_init(|| toolgate_fuzz::tool_index(toolgate_fuzz::golden(), "crm"))
}

fuzz_target!(|bytes: &[u8]| {
    // Any JSON value, also one the strict reading refuses (duplicate keys: the last wins).
    if let Ok(loose) = serde_json::from_slice::<Json>(bytes) {
        match mcp::classify(crm(), "crm", &loose) {
            Ok(rpc) => members(&rpc, &loose),
            Err(e) => invariants::refusal(&e),
        }
    }

    let config = toolgate_fuzz::golden();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let head = match prepare::head(config, None, "POST", TARGET, &headers) {
        Ok(h) => h,
        Err(e) => panic!("the fixed MCP head is refused: {e}"),
    };
    assert!(
        head.needs_body,
        "an MCP POST is classified without its body"
    );
    let p = match prepare::finish(config, head, &headers, Some(bytes)) {
        Ok(p) => p,
        Err(e) => return invariants::refusal(&e),
    };
    let Some(rpc) = &p.rpc else {
        panic!("an MCP POST classified without its JSON-RPC messages");
    };
    let parsed = match body::json(bytes) {
        Ok(v) => v,
        Err(e) => panic!("an MCP body was classified though the strict reading refuses it: {e}"),
    };
    invariants::json_body(bytes, &parsed);
    members(rpc, &parsed);
    let first = &rpc.members[0];
    assert_eq!(
        p.classification, first.classification,
        "the request is not its first member"
    );
    let want_body = if rpc.batch { &parsed } else { &first.message };
    assert_eq!(p.body.as_ref(), Some(want_body), "the body policy sees");
    for m in &rpc.members {
        let one = p.member(m);
        assert_eq!(one.classification, m.classification);
        assert_eq!(one.body.as_ref(), Some(&m.message));
    }
});

/// Each member is what DESIGN.md §4 says of its message.
fn members(rpc: &Rpc, body: &Json) {
    let messages: Vec<&Json> = match body {
        Json::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    assert_eq!(
        rpc.batch,
        body.is_array(),
        "batch is whether the body is an array"
    );
    assert!(
        (1..=mcp::MAX_BATCH).contains(&rpc.members.len()),
        "a batch of {} members",
        rpc.members.len()
    );
    assert_eq!(rpc.members.len(), messages.len(), "one member per message");
    for (m, message) in rpc.members.iter().zip(messages) {
        assert_eq!(
            &m.message, message,
            "a member's message is the message as sent"
        );
        assert_eq!(m.classification.tool, Some(crm()));
        let Json::Object(fields) = message else {
            panic!("a non-object message was classified: {message:?}");
        };
        assert_eq!(fields.get("jsonrpc"), Some(&Json::from("2.0")));
        let method = fields.get("method").and_then(Json::as_str);
        let params = fields.get("params").and_then(Json::as_object);
        let (action, attributes): (String, Vec<(String, Json)>) = match method {
            Some("tools/call") => {
                let name = params
                    .and_then(|p| p.get("name"))
                    .and_then(Json::as_str)
                    .unwrap_or_default();
                assert!(
                    !name.is_empty(),
                    "tools/call without a tool name: {message:?}"
                );
                let args = params
                    .and_then(|p| p.get("arguments"))
                    .and_then(Json::as_object)
                    .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                (format!("crm.{name}"), args)
            }
            Some(other) => {
                assert!(!other.is_empty(), "an empty method was classified");
                let attributes = params
                    .map(|p| {
                        p.iter()
                            .filter(|(k, _)| *k != "_meta")
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                (format!("crm.mcp.{}", other.replace('/', "_")), attributes)
            }
            None => {
                assert!(
                    fields.contains_key("result") || fields.contains_key("error"),
                    "a message without a method that is no response: {message:?}"
                );
                ("crm.mcp.response".to_string(), Vec::new())
            }
        };
        assert_eq!(&*m.classification.action, action, "action of {message:?}");
        let got: Vec<(String, Json)> = m
            .classification
            .attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(got, attributes, "attributes of {message:?}");
        let want_id = method.and(fields.get("id")).cloned();
        assert_eq!(m.id, want_id, "the id to answer {message:?}");
    }
}
