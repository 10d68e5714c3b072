//! Body rules end to end: the body picks the action, body fields become attributes, the
//! body reaches the tool byte for byte (content-length and chunked, at the cap's edges), a
//! body over the cap is refused before the tool, and path-only routes stream large uploads.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::{ToolServer, Toolgate};

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "ok"} if input.action.name in {"ticket.transition", "note.create", "attachment.upload"}

decision := {"allow": false, "reason": "closing tickets needs a human"} if input.action.name == "ticket.close"

decision := {"allow": false, "reason": sprintf("amount %v (%s) is over 100", [input.action.attributes.amount, type_name(input.action.attributes.amount)])} if {
	input.action.name == "payment.create"
}
"#;

fn start(tool: &ToolServer) -> Toolgate {
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {upstream}
    actions:
      - name: ticket.close
        match:
          method: POST
          path: "/rest/api/3/issue/{{issue}}/transitions"
          body: {{ "/transition/id": "31" }}
        attributes: {{ issue: "path:issue" }}
      - name: ticket.transition
        match: {{ method: POST, path: "/rest/api/3/issue/{{issue}}/transitions" }}
      - name: note.create
        match: {{ method: POST, path: /notes }}
        attributes: {{ kind: "body:/kind" }}
      - name: attachment.upload
        match: {{ method: POST, path: "/rest/api/3/issue/{{issue}}/attachments" }}
  - name: payments
    hosts: [payments.test]
    upstream: {upstream}
    actions:
      - name: payment.create
        match: {{ method: POST, path: /v1/payments }}
        attributes: {{ amount: "body:/amount" }}
policy: {{ files: [policy/*.rego] }}
telemetry: {{ decision_log: decisions.log }}
limits: {{ connect_timeout: 2s, upstream_timeout: 10s, shutdown_timeout: 1s }}
"#,
        upstream = tool.url()
    );
    Toolgate::start(&config, &[("policy/main.rego", POLICY)])
}

const TRANSITIONS: &str = "http://jira.test/rest/api/3/issue/SUP-1/transitions";

async fn post_json(tg: &Toolgate, url: &str, body: &str) -> reqwest::Response {
    tg.forward_client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_body_decides_between_close_and_another_transition() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    let close = post_json(&tg, TRANSITIONS, r#"{"transition":{"id":"31"}}"#).await;
    let (status, body) = support::problem(close).await;
    assert_eq!(status, 403);
    assert_eq!(body["action"], "ticket.close");
    assert_eq!(body["detail"], "closing tickets needs a human");
    assert!(
        tool.received().is_empty(),
        "a denied close reached the tool"
    );

    let other = r#"{"transition":{"id":"11"}}"#;
    let resp = post_json(&tg, TRANSITIONS, other).await;
    assert_eq!(resp.status(), 200);
    let got = tool.only();
    assert_eq!(&got.body[..], other.as_bytes());
    assert_eq!(got.target, "/rest/api/3/issue/SUP-1/transitions");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_field_becomes_a_string_attribute() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    let resp = tg
        .forward_client()
        .post("http://payments.test/v1/payments")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=500&currency=EUR")
        .send()
        .await
        .unwrap();
    let (status, body) = support::problem(resp).await;
    assert_eq!(status, 403);
    assert_eq!(body["action"], "payment.create");
    assert_eq!(body["detail"], "amount 500 (string) is over 100");
    assert!(tool.received().is_empty());
    let log = tg.dir.path().join("decisions.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("payment.create")) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no decision line: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["attributes"], serde_json::json!({"amount": "500"}));
}

/// Send `head` then `body` on a fresh connection and return the status and response text.
/// Write errors are ignored: toolgate may refuse and close before reading everything.
fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

fn head(path: &str, framing: &str) -> String {
    format!(
        "POST http://jira.test{path} HTTP/1.1\r\nHost: jira.test\r\nContent-Type: application/json\r\nConnection: close\r\n{framing}\r\n"
    )
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if !body.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A JSON document of exactly `n` bytes (n = 0 is no body).
fn json_of(n: usize) -> Vec<u8> {
    match n {
        0 => Vec::new(),
        1 => b"7".to_vec(),
        n => format!("\"{}\"", "a".repeat(n - 2)).into_bytes(),
    }
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn classified_bodies_reach_the_tool_byte_identical_up_to_the_cap() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    let proxy = tg.proxy;
    let mut expected = Vec::new();
    for n in [0usize, 1, 65_536] {
        let body = json_of(n);
        assert_eq!(body.len(), n);
        for framing in ["content-length", "chunked"] {
            let (h, wire) = match framing {
                "content-length" => (
                    head("/notes", &format!("Content-Length: {n}\r\n")),
                    body.clone(),
                ),
                _ => (
                    head("/notes", "Transfer-Encoding: chunked\r\n"),
                    chunked(&body),
                ),
            };
            let (status, text) = tokio::task::spawn_blocking(move || exchange(proxy, &h, &wire))
                .await
                .unwrap();
            assert_eq!(status, 200, "{n} bytes, {framing}: {text}\n{}", tg.logs());
            expected.push((n, framing, sha(&body)));
        }
    }
    let received = tool.received();
    assert_eq!(received.len(), expected.len());
    for (got, (n, framing, hash)) in received.iter().zip(&expected) {
        assert_eq!(got.body.len(), *n, "{n} bytes, {framing}");
        assert_eq!(
            sha(&got.body),
            *hash,
            "{n} bytes, {framing}: body changed on the way"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_classified_body_one_byte_over_the_cap_is_413_and_the_tool_sees_nothing() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    let proxy = tg.proxy;
    let body = json_of(65_537);
    // Content-Length over the cap: refused from the head, before any body byte is read.
    let h = head("/notes", "Content-Length: 65537\r\n");
    let (status, text) = tokio::task::spawn_blocking(move || exchange(proxy, &h, b""))
        .await
        .unwrap();
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("urn:toolgate:problem:body-too-large"),
        "{text}"
    );
    assert!(text.contains("larger than 65536 bytes"), "{text}");
    // Chunked: refused once the 65,537th byte arrives (the last chunk is never needed).
    let mut wire = format!("{:x}\r\n", body.len()).into_bytes();
    wire.extend_from_slice(&body);
    wire.extend_from_slice(b"\r\n");
    let h = head("/notes", "Transfer-Encoding: chunked\r\n");
    let (status, text) = tokio::task::spawn_blocking(move || exchange(proxy, &h, &wire))
        .await
        .unwrap();
    assert_eq!(status, 413, "{text}");
    assert!(
        tool.received().is_empty(),
        "an over-cap body reached the tool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_mib_upload_on_a_path_only_route_streams_through() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    let upload: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let url = "http://jira.test/rest/api/3/issue/SUP-1/attachments";
    let resp = tg
        .forward_client()
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", tg.logs());
    // And chunked, which toolgate cannot size in advance either.
    let proxy = tg.proxy;
    let wire = chunked(&upload);
    let h = "POST http://jira.test/rest/api/3/issue/SUP-1/attachments HTTP/1.1\r\nHost: jira.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let (status, text) = tokio::task::spawn_blocking(move || exchange(proxy, h, &wire))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let received = tool.received();
    assert_eq!(received.len(), 2);
    for got in received {
        assert_eq!(got.body.len(), upload.len());
        assert_eq!(sha(&got.body), sha(&upload));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_expecting_100_continue_gets_it_before_sending_a_classified_body() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    let proxy = tg.proxy;
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = br#"{"kind":"memo"}"#;
        let h = head(
            "/notes",
            &format!("Content-Length: {}\r\nExpect: 100-continue\r\n", body.len()),
        );
        s.write_all(h.as_bytes()).unwrap();
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).unwrap();
        s.write_all(body).unwrap();
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        (String::from_utf8_lossy(&interim).into_owned(), rest)
    })
    .await
    .unwrap();
    assert!(reply.0.starts_with("HTTP/1.1 100 Continue"), "{reply:?}");
    assert!(reply.1.contains("200 OK"), "{reply:?}");
    let got = tool.only();
    assert_eq!(&got.body[..], br#"{"kind":"memo"}"#);
    assert!(!got.headers.contains_key("expect"));
}

/// POST `body` with `content_type` through the forward proxy; the status and the problem
/// document (JSON null when the tool answered).
async fn post(
    tg: &Toolgate,
    url: &str,
    content_type: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let resp = tg
        .forward_client()
        .post(url)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// Each case is refused with a 400 problem whose detail names its rule, and the tool receives
/// nothing more than it had.
async fn assert_rejected(
    tg: &Toolgate,
    tool: &ToolServer,
    cases: &[(&str, &str, &str, String, &str)],
) {
    let before = tool.received().len();
    for (label, url, content_type, body, rule) in cases {
        let (status, problem) = post(tg, url, content_type, body).await;
        assert_eq!(status, 400, "{label}: {problem}");
        assert_eq!(problem["type"], "urn:toolgate:problem:rejected", "{label}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(rule),
            "{label}: {detail:?} does not name {rule:?}"
        );
        assert_eq!(
            tool.received().len(),
            before,
            "{label}: the tool received {:#?}",
            tool.received().last()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bracketed_form_names_are_read_as_the_tools_nest_them() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    // Rails, PHP and qs read transition[id]=31 as {"transition":{"id":"31"}}: the close, which
    // policy keeps for humans. Read as a flat key it would have been an allowed transition.
    for close in [
        "transition[id]=31",
        "transition%5Bid%5D=31&fields[summary]=x",
    ] {
        let (status, problem) = post(&tg, TRANSITIONS, FORM, close).await;
        assert_eq!(status, 403, "{close}: {problem}");
        assert_eq!(problem["action"], "ticket.close", "{close}");
        assert_eq!(problem["detail"], "closing tickets needs a human");
    }
    assert!(
        tool.received().is_empty(),
        "a denied close reached the tool"
    );
    // Positive control: another transition, nested the same way, reaches the tool byte for byte.
    let other = "transition[id]=11&update[comment][]=done+here";
    let (status, _) = post(&tg, TRANSITIONS, FORM, other).await;
    assert_eq!(status, 200, "{}", tg.logs());
    let got = tool.only();
    assert_eq!(&got.body[..], other.as_bytes());
    assert_eq!(got.headers["content-type"], FORM);
}

#[tokio::test(flavor = "multi_thread")]
async fn form_bodies_the_frameworks_read_differently_never_reach_the_tool() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    let legit = "transition[id]=11&items[0][sku]=a&items[1][sku]=b&tags[]=x&tags[]=y";
    let (status, _) = post(&tg, TRANSITIONS, FORM, legit).await;
    assert_eq!(status, 200, "{}", tg.logs());
    assert_eq!(&tool.only().body[..], legit.as_bytes());
    let many: Vec<String> = (0..1001).map(|i| format!("f{i}=1")).collect();
    let t = TRANSITIONS;
    let s = |b: &str| b.to_string();
    assert_rejected(
        &tg,
        &tool,
        &[
            (
                "JSON declared as a form",
                t,
                FORM,
                s(r#"{"transition":{"id":"31"}}"#),
                "declared as a form (application/x-www-form-urlencoded) but starts like JSON",
            ),
            (
                "JSON array declared as a form",
                t,
                FORM,
                s(" [1]"),
                "starts like JSON",
            ),
            (
                "a form declared as JSON",
                t,
                JSON,
                s("transition[id]=31"),
                "body is not valid JSON",
            ),
            (
                "flat and nested",
                t,
                FORM,
                s("transition=11&transition[id]=31"),
                "used as more than one of a value, a list",
            ),
            (
                "list and fields",
                t,
                FORM,
                s("tags[]=x&tags[a]=y"),
                "used as more than one of a value, a list",
            ),
            (
                "unbalanced bracket",
                t,
                FORM,
                s("transition[id=31"),
                "unbalanced or stray brackets",
            ),
            (
                "stray closing bracket",
                t,
                FORM,
                s("transition]id=31"),
                "unbalanced or stray brackets",
            ),
            (
                "text after a bracket",
                t,
                FORM,
                s("transition[id]x=31"),
                "unbalanced or stray brackets",
            ),
            (
                "[] before a key",
                t,
                FORM,
                s("transition[][id]=31"),
                "'[]' anywhere but at the end",
            ),
            (
                "six bracket groups",
                t,
                FORM,
                s("a[b][c][d][e][f][g]=1"),
                "more than 5 bracket groups",
            ),
            (
                "an index gap",
                t,
                FORM,
                s("items[1][sku]=a"),
                "numeric keys at one level must run 0, 1, 2",
            ),
            (
                "index 20",
                t,
                FORM,
                s("items[20]=a"),
                "numeric keys at one level must run 0, 1, 2",
            ),
            (
                "a dotted name",
                t,
                FORM,
                s("transition.id=31"),
                "'.' or ' ' in a name",
            ),
            (
                "a name with a space",
                t,
                FORM,
                s("transition+id=31"),
                "'.' or ' ' in a name",
            ),
            (
                "]= in a value",
                t,
                FORM,
                s("note=a]=b&transition[id]=31"),
                "']=' after the field's first '='",
            ),
            (
                "names that differ in case",
                t,
                FORM,
                s("transition[id]=11&transition[ID]=31"),
                "differ only in case",
            ),
            (
                "a repeated nested name",
                t,
                FORM,
                s("transition[id]=11&transition[id]=31"),
                "more than once",
            ),
            (
                "1,001 fields",
                t,
                FORM,
                many.join("&"),
                "more than 1000 fields",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_keys_that_differ_only_in_case_never_reach_the_tool() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    let legit = r#"{"transition":{"id":"11"},"fields":{"Summary":"x","labels":["a"]}}"#;
    let (status, _) = post(&tg, TRANSITIONS, JSON, legit).await;
    assert_eq!(status, 200, "{}", tg.logs());
    assert_eq!(&tool.only().body[..], legit.as_bytes());
    let t = TRANSITIONS;
    let s = |b: &str| b.to_string();
    assert_rejected(
        &tg,
        &tool,
        &[
            // Go's encoding/json and ASP.NET bind ID (and the dotless ı) to the field id.
            (
                "id and ID",
                t,
                JSON,
                s(r#"{"transition":{"id":"11","ID":"31"}}"#),
                r#"body has the keys "id" and "ID", which differ only in case"#,
            ),
            (
                "at the top",
                t,
                JSON,
                s(r#"{"Transition":{"id":"31"},"transition":{"id":"11"}}"#),
                "differ only in case",
            ),
            (
                "deep in an array",
                t,
                JSON,
                s(r#"{"transition":{"id":"11"},"x":[{"key":1,"\u212aey":2}]}"#),
                "differ only in case",
            ),
            (
                "the rule's key only in another case",
                t,
                JSON,
                s(r#"{"transition":{"ID":"31"}}"#),
                "body key \"ID\" differs only in case from the field /transition/id",
            ),
            (
                "a dotless i",
                t,
                JSON,
                s(r#"{"transition":{"ıd":"31"}}"#),
                "differs only in case from the field /transition/id",
            ),
            (
                "an attribute's key in another case",
                "http://payments.test/v1/payments",
                JSON,
                s(r#"{"Amount":5000}"#),
                "differs only in case from the field /amount",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_method_override_field_in_a_form_never_reaches_the_tool() {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    // Positive controls: a classified form and a form POST no rule reads (its names are
    // scanned, its bytes forwarded as sent).
    let note = "kind=memo&text=a+method+field";
    let (status, _) = post(&tg, "http://jira.test/notes", FORM, note).await;
    assert_eq!(status, 200, "{}", tg.logs());
    let upload = "file=x&method=upload";
    let attachments = "http://jira.test/rest/api/3/issue/SUP-1/attachments";
    let (status, _) = post(&tg, attachments, FORM, upload).await;
    assert_eq!(status, 200, "{}", tg.logs());
    let got = tool.received();
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].body[..], note.as_bytes());
    assert_eq!(&got[1].body[..], upload.as_bytes());
    let s = |b: &str| b.to_string();
    let rule = "method-override parameter";
    assert_rejected(
        &tg,
        &tool,
        &[
            (
                "in a classified form",
                "http://jira.test/notes",
                FORM,
                s("kind=memo&_method=DELETE"),
                rule,
            ),
            (
                "in a form no rule reads",
                attachments,
                FORM,
                s("file=x&_method=DELETE"),
                rule,
            ),
            (
                "percent-encoded",
                attachments,
                FORM,
                s("file=x&%5Fmethod=DELETE"),
                rule,
            ),
            ("as a list", attachments, FORM, s("_method[]=DELETE"), rule),
            (
                "PHP's spelling",
                attachments,
                FORM,
                s(".method=DELETE"),
                rule,
            ),
            (
                "a header name as a field",
                attachments,
                FORM,
                s("X-HTTP-Method-Override=DELETE"),
                rule,
            ),
        ],
    )
    .await;
}
