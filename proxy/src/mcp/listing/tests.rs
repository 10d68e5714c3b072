use std::sync::Arc;

use serde_json::json;
use toolgate_policy::classify::mcp::definition::Definitions;
use toolgate_policy::config::PolicySource;

use super::*;

fn policy() -> Policy {
    Policy::compile(&PolicySource {
        modules: vec![(
            "t.rego".into(),
            "package toolgate\nimport rego.v1\ndefault decision := true\ndecision := false if input.action.name == \"crm.delete\"\n"
                .into(),
        )],
        data: json!({}),
        query: "data.toolgate.decision".into(),
        mode: Default::default(),
    })
    .unwrap()
}

fn base() -> Value {
    Value::from(
        json!({"action": {"name": "crm.mcp.tools_list", "tool": "crm", "attributes": {}},
        "request": {"body": null}}),
    )
}

fn listing() -> Listing {
    let mut l = Listing::new(base(), json!({"action": "crm.mcp.tools_list"}));
    l.add(json!(1));
    l
}

fn head(l: &mut Listing, kind: &str, cap: usize) -> Result<(), McpRefusal> {
    let mut r = ResponseHeader::build(200, None).unwrap();
    r.insert_header("content-type", kind).unwrap();
    l.head(&mut r, cap)
}

const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"search"},{"name":"delete"}],"nextCursor":"c2"}}"#;

#[test]
fn an_sse_listing_split_anywhere_is_filtered_and_other_events_pass_at_once() {
    let (policy, defs, tool) = (policy(), Definitions::new(8), Arc::<str>::from("crm"));
    let lister = Lister {
        policy: &policy,
        definitions: &defs,
        tool: &tool,
        lock: None,
        dry_run: false,
    };
    let progress =
        "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n";
    let stream = format!("{progress}id: 7\nevent: message\ndata: {LIST}\r\n\r\n");
    for size in [1, 2, 7, 64, stream.len()] {
        let mut l = listing();
        head(&mut l, "text/event-stream", 1 << 20).unwrap();
        let mut out = Vec::new();
        let mut progress_out_at = None;
        let chunks: Vec<&[u8]> = stream.as_bytes().chunks(size).collect();
        for (i, c) in chunks.iter().enumerate() {
            let end = i + 1 == chunks.len();
            if let Some(b) = l.chunk(&lister, Some(c), end, 1 << 20) {
                out.extend_from_slice(&b);
            }
            if progress_out_at.is_none() && out.len() >= progress.len() {
                progress_out_at = Some((i + 1) * size);
            }
        }
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with(progress), "{out}");
        assert!(
            progress_out_at.unwrap() < progress.len() + size,
            "the progress event waited"
        );
        let want =
            r#"{"id":1,"jsonrpc":"2.0","result":{"nextCursor":"c2","tools":[{"name":"search"}]}}"#;
        assert_eq!(
            out,
            format!("{progress}id: 7\nevent: message\ndata: {want}\n\n"),
            "chunk size {size}"
        );
        assert_eq!(
            l.counts,
            Counts {
                kept: 1,
                dropped: 1
            }
        );
    }
}

#[test]
fn a_json_listing_over_the_cap_is_never_held_beyond_it() {
    let (policy, defs, tool) = (policy(), Definitions::new(8), Arc::<str>::from("crm"));
    let lister = Lister {
        policy: &policy,
        definitions: &defs,
        tool: &tool,
        lock: None,
        dry_run: false,
    };
    let mut l = listing();
    head(&mut l, "application/json", 64).unwrap();
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"tools\":[{}]}}}}",
        "{\"name\":\"x\"},".repeat(100)
    );
    let mut out = Vec::new();
    for c in big.as_bytes().chunks(16) {
        if let Some(b) = l.chunk(&lister, Some(c), false, 64) {
            out.extend_from_slice(&b);
        }
        assert!(l.held.len() <= 64 + 16);
    }
    assert!(out.is_empty(), "nothing before the end");
    let last = l.chunk(&lister, None, true, 64).unwrap();
    let error: Json = serde_json::from_slice(&last).unwrap();
    assert_eq!(error["id"], 1);
    assert_eq!(error["error"]["code"], super::super::REFUSED);
    assert!(
        l.chunk(&lister, Some(b"more"), true, 64).is_none(),
        "the error goes once"
    );
}

#[test]
fn an_sse_event_over_the_cap_becomes_an_error_event_at_once() {
    let (policy, defs, tool) = (policy(), Definitions::new(8), Arc::<str>::from("crm"));
    let lister = Lister {
        policy: &policy,
        definitions: &defs,
        tool: &tool,
        lock: None,
        dry_run: false,
    };
    let mut l = listing();
    head(&mut l, "text/event-stream", 32).unwrap();
    let out = l
        .chunk(&lister, Some(format!("data: {LIST}").as_bytes()), false, 32)
        .unwrap();
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(
        text.starts_with("event: message\ndata: {") && text.ends_with("\n\n"),
        "{text}"
    );
    assert!(text.contains("mcp.max_list_bytes"));
    assert!(l.chunk(&lister, Some(b"\n\n"), true, 32).is_none());
}

#[test]
fn the_head_decides_what_is_read() {
    let mut l = listing();
    let mut r = ResponseHeader::build(200, None).unwrap();
    r.insert_header("content-type", "application/json").unwrap();
    r.insert_header("content-length", "100").unwrap();
    assert!(matches!(
        l.head(&mut r, 99),
        Err(McpRefusal::ListTooLarge(99))
    ));
    l.head(&mut r, 100).unwrap();
    assert!(
        r.headers.get("content-length").is_none(),
        "the length may change"
    );
    r.insert_header("content-encoding", "gzip").unwrap();
    assert!(matches!(
        l.head(&mut r, 100),
        Err(McpRefusal::ListUnreadable(_))
    ));
    // Not a listing answer (an error status, a 202): passed through as it came.
    let mut e = ResponseHeader::build(500, None).unwrap();
    e.insert_header("content-type", "application/json").unwrap();
    e.insert_header("content-length", "5").unwrap();
    let mut l = listing();
    l.head(&mut e, 1).unwrap();
    assert_eq!(e.headers["content-length"], "5");
    let (policy, defs, tool) = (policy(), Definitions::new(8), Arc::<str>::from("crm"));
    let lister = Lister {
        policy: &policy,
        definitions: &defs,
        tool: &tool,
        lock: None,
        dry_run: false,
    };
    assert_eq!(
        l.chunk(&lister, Some(b"oops!"), true, 1).as_deref(),
        Some(&b"oops!"[..])
    );
}

#[test]
fn dry_run_lists_everything_and_still_learns_definitions() {
    let (policy, defs, tool) = (policy(), Definitions::new(8), Arc::<str>::from("crm"));
    let lister = Lister {
        policy: &policy,
        definitions: &defs,
        tool: &tool,
        lock: None,
        dry_run: true,
    };
    let (body, counts) = lister.rewrite_body(&base(), &[json!(1)], LIST.as_bytes());
    assert!(body.is_none(), "nothing dropped: the bytes go as they came");
    assert_eq!(
        counts,
        Counts {
            kept: 2,
            dropped: 0
        }
    );
    assert_eq!(defs.len(), 2);
}
