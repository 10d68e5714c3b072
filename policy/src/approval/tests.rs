#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value as Json};

use super::*;

fn attrs(pairs: &[(&str, Json)]) -> Vec<(Arc<str>, Json)> {
    pairs
        .iter()
        .map(|(k, v)| (Arc::from(*k), v.clone()))
        .collect()
}

struct Req {
    attributes: Vec<(Arc<str>, Json)>,
    headers: HeaderMap,
    agent: &'static str,
    task: &'static str,
    verified: bool,
    action: &'static str,
    method: &'static str,
    scheme: &'static str,
    host: &'static str,
    port: u16,
    target: &'static str,
}

impl Req {
    fn payment() -> Req {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        Req {
            attributes: attrs(&[("amount", json!("500")), ("currency", json!("EUR"))]),
            headers,
            agent: "spiffe://t/agent",
            task: "T-1",
            verified: false,
            action: "payment.create",
            method: "POST",
            scheme: "https",
            host: "payments.example.com",
            port: 443,
            target: "/v1/payments?amount=500&currency=EUR",
        }
    }

    fn head(&self) -> Digest {
        Binding {
            agent: self.agent,
            task: self.task,
            task_verified: self.verified,
            action: self.action,
            attributes: &self.attributes,
            method: self.method,
            scheme: self.scheme,
            host: self.host,
            port: self.port,
            target: self.target,
            headers: &self.headers,
        }
        .head()
    }

    fn digest(&self, body: &[u8]) -> Digest {
        digest(&self.head(), &body_hash(body))
    }
}

#[test]
fn identical_requests_agree_and_every_field_changes_the_digest() {
    let base = Req::payment();
    let body = br#"{"note":"refund"}"#;
    assert_eq!(base.digest(body), Req::payment().digest(body));
    // Attribute order is not part of the request: canonical JSON with sorted keys.
    let mut reordered = Req::payment();
    reordered.attributes.reverse();
    assert_eq!(reordered.digest(body), base.digest(body));

    type Change<'a> = (&'a str, Box<dyn Fn(&mut Req)>);
    let changes: Vec<Change> = vec![
        ("agent", Box::new(|r| r.agent = "spiffe://t/other")),
        ("task", Box::new(|r| r.task = "T-2")),
        ("verified task", Box::new(|r| r.verified = true)),
        ("action", Box::new(|r| r.action = "payment.refund")),
        (
            "amount",
            Box::new(|r| {
                r.attributes = attrs(&[("amount", json!("501")), ("currency", json!("EUR"))])
            }),
        ),
        (
            "amount type",
            Box::new(|r| {
                r.attributes = attrs(&[("amount", json!(500)), ("currency", json!("EUR"))])
            }),
        ),
        (
            "extra attribute",
            Box::new(|r| r.attributes.push((Arc::from("memo"), json!(null)))),
        ),
        ("method", Box::new(|r| r.method = "PUT")),
        ("scheme", Box::new(|r| r.scheme = "http")),
        ("host", Box::new(|r| r.host = "payments2.example.com")),
        ("port", Box::new(|r| r.port = 8443)),
        (
            "target",
            Box::new(|r| r.target = "/v1/payments?amount=500&currency=EUR&x=1"),
        ),
        (
            "content-type",
            Box::new(|r| {
                r.headers.insert(
                    "content-type",
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
            }),
        ),
        (
            "method override",
            Box::new(|r| {
                r.headers
                    .insert("x-http-method-override", HeaderValue::from_static("DELETE"));
            }),
        ),
        (
            "url override",
            Box::new(|r| {
                r.headers
                    .insert("x-original-url", HeaderValue::from_static("/admin"));
            }),
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    seen.insert(base.digest(body));
    for (what, change) in &changes {
        let mut r = Req::payment();
        change(&mut r);
        assert!(
            seen.insert(r.digest(body)),
            "{what} did not change the digest"
        );
    }
    // The body: another body, or none at all.
    assert_ne!(base.digest(body), base.digest(br#"{"note":"refunD"}"#));
    assert_ne!(base.digest(body), base.digest(b""));
    // Headers outside the bound set do not: a retry may send another User-Agent or trace.
    let mut r = Req::payment();
    r.headers
        .insert("user-agent", HeaderValue::from_static("retry/2"));
    r.headers
        .insert("traceparent", HeaderValue::from_static("00-1-2-01"));
    assert_eq!(r.digest(body), base.digest(body));
}

#[test]
fn field_boundaries_cannot_be_shifted() {
    // "T-1" + "payment.create" must not hash like "T-1payment" + ".create".
    let a = Req::payment();
    let mut b = Req::payment();
    b.task = "T-1payment";
    b.action = ".create";
    assert_ne!(a.head(), b.head());
}

#[test]
fn an_rpc_message_is_bound_without_its_id() {
    let one = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "refund", "arguments": {"amount": 500}}});
    let two = json!({"params": {"arguments": {"amount": 500}, "name": "refund"}, "method": "tools/call", "id": "call-7", "jsonrpc": "2.0"});
    assert_eq!(rpc_body_hash(&one), rpc_body_hash(&two));
    let other = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "refund", "arguments": {"amount": 501}}});
    assert_ne!(rpc_body_hash(&one), rpc_body_hash(&other));
}

#[test]
fn canonical_json_sorts_keys_at_every_depth() {
    let v = json!({"b": [{"z": 1, "a": "é\"x"}], "a": null});
    assert_eq!(canonical_json(&v), r#"{"a":null,"b":[{"a":"é\"x","z":1}]}"#);
}

#[test]
fn digests_print_and_parse_as_hex() {
    let d = body_hash(b"");
    assert_eq!(
        d.to_hex(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
    for bad in ["", "e3b0", &"g".repeat(64), &"é".repeat(32)] {
        assert_eq!(Digest::from_hex(bad), None, "{bad}");
    }
}

#[test]
fn the_shown_body_is_cut_text_or_base64_with_the_whole_hash() {
    let long = "a".repeat(MAX_SHOWN_BODY + 10);
    let shown = ShownBody::of(long.as_bytes(), &body_hash(long.as_bytes()));
    assert_eq!(shown.bytes, long.len() as u64);
    assert!(shown.truncated);
    assert_eq!(shown.text.as_ref().unwrap().len(), MAX_SHOWN_BODY);
    assert_eq!(shown.sha256, body_hash(long.as_bytes()).to_hex());
    // A multi-byte character at the cut is left out whole.
    let mut accented = "a".repeat(MAX_SHOWN_BODY - 1);
    accented.push('é');
    let shown = ShownBody::of(accented.as_bytes(), &body_hash(accented.as_bytes()));
    assert_eq!(shown.text.as_ref().unwrap().len(), MAX_SHOWN_BODY - 1);
    // Binary, or text with control characters, is base64.
    let shown = ShownBody::of(b"\x00\x01\xff", &body_hash(b""));
    assert_eq!((shown.text, shown.base64.as_deref()), (None, Some("AAH/")));
    let shown = ShownBody::of(b"line\x1b[31m", &body_hash(b""));
    assert!(shown.text.is_none() && shown.base64.is_some());
    let shown = ShownBody::of(b"{\"a\":\n\t1}", &body_hash(b""));
    assert_eq!(shown.text.as_deref(), Some("{\"a\":\n\t1}"));
}

#[test]
fn credentials_are_never_shown() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("authorization", "Bearer agent"),
        ("cookie", "c=1"),
        ("x-api-key", "k"),
        ("x-toolgate-task", "T-1"),
        ("x-jira-token", "hidden"),
        ("content-type", "application/json"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    let hidden = [http::HeaderName::from_static("x-jira-token")];
    let (shown, cut) = shown_headers(&h, &hidden, MAX_SHOWN_HEADERS);
    assert_eq!(shown.keys().collect::<Vec<_>>(), ["content-type"]);
    assert!(!cut);
    let (shown, cut) = shown_headers(&h, &[], 10);
    assert!(cut && shown.is_empty());
    assert_eq!(
        shown_query(Some("a=1&key=s3cret&b=2&k%65y=again"), Some("key")).as_deref(),
        Some("a=1&b=2")
    );
    assert_eq!(shown_query(Some("a=1"), None).as_deref(), Some("a=1"));
}

#[test]
fn verdicts_are_bounded_and_checked() {
    let v = parse_verdict(
        br#"{"approver": " alice@example.com ", "comment": "refund agreed\nwith finance"}"#,
    )
    .unwrap();
    assert_eq!(v.approver, "alice@example.com");
    assert_eq!(v.comment.as_deref(), Some("refund agreed\nwith finance"));
    assert_eq!(
        parse_verdict(br#"{"approver": "bob", "comment": ""}"#)
            .unwrap()
            .comment,
        None
    );
    let long_name = format!(
        r#"{{"approver": "{}"}}"#,
        "a".repeat(MAX_APPROVER_BYTES + 1)
    );
    let long_comment = format!(
        r#"{{"approver": "a", "comment": "{}"}}"#,
        "c".repeat(MAX_COMMENT_BYTES + 1)
    );
    for (body, want) in [
        (&b"{}"[..], VerdictError::BadApprover),
        (br#"{"approver": ""}"#, VerdictError::BadApprover),
        (br#"{"approver": "   "}"#, VerdictError::BadApprover),
        (br#"{"approver": "a\u0000b"}"#, VerdictError::BadApprover),
        (long_name.as_bytes(), VerdictError::BadApprover),
        (long_comment.as_bytes(), VerdictError::BadComment),
        (
            br#"{"approver": "a", "comment": "\u001b[2J"}"#,
            VerdictError::BadComment,
        ),
    ] {
        assert_eq!(
            parse_verdict(body),
            Err(want),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    for body in [
        &b"[]"[..],
        b"",
        b"{\"approver\": 1}",
        br#"{"approver": "a", "role": "admin"}"#,
        b"\xff",
    ] {
        assert!(
            matches!(parse_verdict(body), Err(VerdictError::Json(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn input_approval_carries_who_when_and_why() {
    let g = Granted {
        id: "a1".into(),
        approved_by: "alice".into(),
        approved_at: "2026-12-01T10:00:00Z".into(),
        comment: None,
    };
    let mut input = regorus::Value::from(std::collections::BTreeMap::new());
    g.annotate(&mut input);
    let v = serde_json::to_value(&input).unwrap();
    assert_eq!(
        v,
        json!({"approval": {"id": "a1", "approved_by": "alice", "approved_at": "2026-12-01T10:00:00Z", "comment": null}})
    );
}
