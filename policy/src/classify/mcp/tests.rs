use std::sync::Arc;

use http::HeaderMap;
use serde_json::{json, Value as Json};

use super::definition::{digest, Definitions, Known, Lock, Source};
use super::headers::{self, check, decode};
use super::params::{check_params, param_headers};
use super::{classify, Rpc};

fn rpc(body: Json) -> Rpc {
    classify(0, "crm", &body).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn stateless(method: &str, params: Json) -> Json {
    let mut params = params;
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
}

#[test]
fn the_sentinel_decodes_only_canonical_base64_of_utf8() {
    assert_eq!(decode("search").as_deref(), Some("search"));
    assert_eq!(
        decode("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
        Some("Hello, 世界")
    );
    // Not canonical (trailing bits set), not base64, not UTF-8: never a value.
    assert_eq!(decode("=?base64?SGVsbG9=?="), None);
    assert_eq!(decode("=?base64?***?="), None);
    assert_eq!(decode("=?base64?/w==?="), None);
}

#[test]
fn stateless_requests_must_mirror_method_and_name() {
    let call = rpc(stateless(
        "tools/call",
        json!({"name": "search", "arguments": {}}),
    ));
    let good = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "search"),
    ];
    assert_eq!(check(&call, &headers(&good)), Ok(()));
    for drop in 0..good.len() {
        let some: Vec<_> = good
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != drop)
            .map(|(_, p)| *p)
            .collect();
        let err = check(&call, &headers(&some)).unwrap_err();
        assert_eq!(err.ids, vec![json!(1)]);
        assert!(err.message.contains("missing"), "{}", err.message);
    }
    // The session era needs none of them, but a present one must agree.
    let legacy = rpc(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "search"}}));
    assert_eq!(check(&legacy, &HeaderMap::new()), Ok(()));
    assert!(check(&legacy, &headers(&[("mcp-name", "delete")])).is_err());
    // A notification's headers are not required.
    let note = rpc(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    assert_eq!(
        check(&note, &headers(&[("mcp-protocol-version", "2026-07-28")])),
        Ok(())
    );
    let err = check(&note, &headers(&[("mcp-method", "ping")])).unwrap_err();
    assert_eq!(err.ids, vec![Json::Null]);
}

#[test]
fn a_batch_has_no_single_method_to_mirror() {
    let batch = rpc(json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
    ]));
    assert_eq!(check(&batch, &HeaderMap::new()), Ok(()));
    let err = check(&batch, &headers(&[("mcp-method", "tools/list")])).unwrap_err();
    assert!(err.batch);
    assert_eq!(err.ids, vec![json!(1), json!(2)]);
}

#[test]
fn name_headers_follow_the_method() {
    let read = rpc(stateless("resources/read", json!({"uri": "file:///a"})));
    let base = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "resources/read"),
    ];
    let with = |name: &str| {
        let mut h = headers(&base);
        h.insert("mcp-name", name.parse().unwrap());
        h
    };
    assert_eq!(check(&read, &with("file:///a")), Ok(()));
    assert!(check(&read, &with("file:///b")).is_err());
    // A method the spec does not name, carrying a name: the header, if any, must match it.
    let other = rpc(
        json!({"jsonrpc": "2.0", "id": 3, "method": "resources/subscribe",
        "params": {"uri": "file:///a"}}),
    );
    assert_eq!(
        check(&other, &headers(&[("mcp-name", "file:///a")])),
        Ok(())
    );
    assert!(check(&other, &headers(&[("mcp-name", "file:///z")])).is_err());
    let list = rpc(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}));
    assert!(check(&list, &headers(&[("mcp-name", "x")])).is_err());
}

#[test]
fn meta_names_the_task_and_the_trace() {
    let r = rpc(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "search", "_meta": {"toolgate/task": "T-1", "traceparent": "00-ab-cd-01"}}}),
    );
    assert_eq!(r.task.as_deref(), Some("T-1"));
    assert_eq!(r.traceparent.as_deref(), Some("00-ab-cd-01"));
    // Members of one batch must not name different tasks.
    let two = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": {"toolgate/task": "A"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"_meta": {"toolgate/task": "B"}}},
    ]);
    assert!(classify(0, "crm", &two).is_err());
    for bad in [json!(""), json!(7), json!("a b"), json!("x".repeat(129))] {
        let m = json!({"jsonrpc": "2.0", "id": 1, "method": "ping",
            "params": {"_meta": {"toolgate/task": bad}}});
        assert!(classify(0, "crm", &m).is_err(), "{m}");
    }
}

#[test]
fn targets_of_resources_prompts_and_completions_are_required() {
    for bad in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": ""}}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "completion/complete",
            "params": {"ref": {"type": "ref/resource"}}}),
    ] {
        assert!(classify(0, "crm", &bad).is_err(), "{bad}");
    }
    let r = rpc(
        json!({"jsonrpc": "2.0", "id": 1, "method": "completion/complete",
        "params": {"ref": {"type": "ref/resource", "uri": "file:///{x}"}, "argument": {"name": "x", "value": ""}}}),
    );
    let m = &r.members[0].classification;
    assert_eq!(&*m.action, "crm.mcp.completion_complete");
    assert!(m
        .attributes
        .iter()
        .any(|(k, v)| &**k == "uri" && v == "file:///{x}"));
}

fn sql() -> Json {
    json!({"name": "sql", "inputSchema": {"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "opts": {"type": "object", "properties": {"limit": {"type": "integer", "x-mcp-header": "Limit"}}},
        "query": {"type": "string"}}}})
}

#[test]
fn param_headers_are_read_from_pure_properties_chains() {
    let params = param_headers(&sql()["inputSchema"]).unwrap();
    let names: Vec<(&str, Vec<&str>)> = params
        .iter()
        .map(|p| {
            (
                p.header.as_str(),
                p.path.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert!(names.contains(&("mcp-param-region", vec!["region"])));
    assert!(names.contains(&("mcp-param-limit", vec!["opts", "limit"])));
    for bad in [
        json!({"items": {"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}}),
        json!({"properties": {"a": {"type": "number", "x-mcp-header": "A"}}}),
        json!({"properties": {"a": {"type": "string", "x-mcp-header": "A B"}}}),
        json!({"properties": {"a": {"type": "string", "x-mcp-header": "A"},
            "b": {"type": "string", "x-mcp-header": "a"}}}),
        json!({"x-mcp-header": "Root", "type": "string"}),
    ] {
        assert!(param_headers(&bad).is_err(), "{bad}");
    }
}

#[test]
fn param_headers_must_mirror_the_arguments() {
    let declared = param_headers(&sql()["inputSchema"]).unwrap();
    let args = json!({"region": "eu", "opts": {"limit": 5}});
    let args = args.as_object();
    let fail = |m: String| headers::Mismatch {
        message: m,
        ids: vec![],
        batch: false,
        action: None,
    };
    let ok = |h: &[(&str, &str)]| check_params("sql", Some(&declared), args, &headers(h), fail);
    assert_eq!(
        ok(&[("mcp-param-region", "eu"), ("mcp-param-limit", "5")]),
        Ok(())
    );
    assert_eq!(
        ok(&[("mcp-param-region", "eu"), ("mcp-param-limit", "5.00")]),
        Ok(())
    );
    assert!(ok(&[("mcp-param-region", "eu")]).is_err());
    assert!(ok(&[("mcp-param-region", "us"), ("mcp-param-limit", "5")]).is_err());
    assert!(ok(&[("mcp-param-region", "eu"), ("mcp-param-limit", "5.5")]).is_err());
    assert!(ok(&[
        ("mcp-param-region", "eu"),
        ("mcp-param-limit", "5"),
        ("mcp-param-x", "1")
    ])
    .is_err());
    assert!(ok(&[
        ("mcp-param-region", "eu"),
        ("mcp-param-region", "eu"),
        ("mcp-param-limit", "5")
    ])
    .is_err());
    // An absent (or null) argument: its header must be absent too.
    let none = json!({"opts": {"limit": null}});
    assert_eq!(
        check_params(
            "sql",
            Some(&declared),
            none.as_object(),
            &HeaderMap::new(),
            fail
        ),
        Ok(())
    );
    assert!(check_params(
        "sql",
        Some(&declared),
        none.as_object(),
        &headers(&[("mcp-param-region", "eu")]),
        fail
    )
    .is_err());
    // An unknown definition: no header can be checked, so none is accepted.
    assert_eq!(
        check_params("sql", None, args, &HeaderMap::new(), fail),
        Ok(())
    );
    assert!(check_params(
        "sql",
        None,
        args,
        &headers(&[("mcp-param-region", "eu")]),
        fail
    )
    .is_err());
}

#[test]
fn the_digest_covers_what_the_model_reads_in_canonical_order() {
    let a = json!({"name": "t", "description": "d", "inputSchema": {"b": 1, "a": [1, {"y": 2, "x": 1}]}});
    let b = json!({"inputSchema": {"a": [1, {"x": 1, "y": 2}], "b": 1}, "description": "d", "name": "t",
        "_meta": {"ttl": 5}, "icons": []});
    assert_eq!(
        digest(&a),
        digest(&b),
        "key order, _meta and icons do not count"
    );
    for (key, value) in [
        ("description", json!("e")),
        ("title", json!("T")),
        ("inputSchema", json!({})),
        ("outputSchema", json!({})),
        ("annotations", json!({"destructiveHint": true})),
    ] {
        let mut changed = a.clone();
        changed[key] = value;
        assert_ne!(digest(&a), digest(&changed), "{key}");
    }
    let shown = digest(&a).to_string();
    assert!(shown.starts_with("sha256:") && shown.len() == 71);
    assert_eq!(shown.parse::<super::definition::Digest>(), Ok(digest(&a)));
}

#[test]
fn definitions_pin_at_first_sight_and_never_evict() {
    let store = Definitions::new(2);
    let crm: Arc<str> = Arc::from("crm");
    let v1 = json!({"name": "a", "description": "one"});
    let v2 = json!({"name": "a", "description": "two"});
    assert!(store.observe(&crm, "a", Known::of(&v1)));
    assert!(!store.status("crm", "a", None).changed());
    assert!(store.observe(&crm, "a", Known::of(&v2)));
    let status = store.status("crm", "a", None);
    assert!(status.changed());
    assert_eq!(status.pin, Some((digest(&v1), Source::FirstSight)));
    assert_eq!(status.current, Some(digest(&v2)));
    // Back to the pinned definition: unchanged again.
    store.observe(&crm, "a", Known::of(&v1));
    assert!(!store.status("crm", "a", None).changed());
    // Full: a new tool is not remembered, and nothing is evicted to make room.
    assert!(store.observe(&crm, "b", Known::of(&json!({"name": "b"}))));
    assert!(!store.observe(&crm, "c", Known::of(&json!({"name": "c"}))));
    assert_eq!(store.len(), 2);
    assert_eq!(store.status("crm", "c", None).pin, None);
    assert!(store.status("crm", "a", None).pin.is_some());
    // A lock pins instead of first sight; a tool it does not list is not pinned.
    let mut lock = Lock {
        file: "crm.lock.yaml".into(),
        ..Lock::default()
    };
    lock.tools.insert("a".into(), Known::of(&v2));
    let status = store.status("crm", "a", Some(&lock));
    assert_eq!(status.pin, Some((digest(&v2), Source::Lock)));
    assert!(status.changed(), "the server lists v1, the lock pins v2");
    assert_eq!(store.status("crm", "b", Some(&lock)).pin, None);
}
