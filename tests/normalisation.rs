//! Every normalisation rule end to end (DESIGN.md §7): each ambiguous request is refused with
//! 400 and the tool receives nothing. The requests are raw bytes on the wire, as an agent
//! trying a bypass would send them; the policy allows everything, so only normalisation
//! stands between each request and the tool.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::{ToolServer, Toolgate};

const ALLOW_ALL: &str =
    "package toolgate\nimport rego.v1\ndecision := {\"allow\": true, \"reason\": \"anything goes\"}\n";

fn start(tool: &ToolServer) -> Toolgate {
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {}
    actions:
      - name: ticket.read
        match: {{ method: GET, path: "/rest/api/3/issue/{{issue}}" }}
      - name: ticket.close
        match:
          method: POST
          path: "/rest/api/3/issue/{{issue}}/transitions"
          body: {{ "/transition/id": "31" }}
      - name: ticket.transition
        match: {{ method: POST, path: "/rest/api/3/issue/{{issue}}/transitions" }}
routes:
  - {{ prefix: /jira/, tool: jira }}
policy: {{ files: [policy/*.rego] }}
limits: {{ connect_timeout: 2s, upstream_timeout: 5s, shutdown_timeout: 1s }}
"#,
        tool.url()
    );
    Toolgate::start(&config, &[("policy/main.rego", ALLOW_ALL)])
}

/// Send raw bytes on a fresh connection, return what came back.
fn send(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Each case must be refused with 400 (a problem document when toolgate writes it; pingora
/// refuses some framing errors itself, also with 400) and reach nothing.
async fn assert_refused(cases: &[(&str, Vec<u8>)], problem_required: bool) {
    let tool = ToolServer::http().await;
    let tg = start(&tool);
    // The same tool is reachable for a well-formed request: the refusals are the rules' doing.
    let ok = send(
        tg.proxy,
        b"GET http://jira.test/rest/api/3/issue/SUP-1 HTTP/1.1\r\nHost: jira.test\r\nConnection: close\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(tool.received().len(), 1);
    for (rule, request) in cases {
        let proxy = tg.proxy;
        let request = request.clone();
        let reply = tokio::task::spawn_blocking(move || send(proxy, &request))
            .await
            .unwrap();
        assert!(reply.starts_with("HTTP/1.1 400"), "{rule}: {reply}");
        if problem_required {
            assert!(
                reply.contains("application/problem+json"),
                "{rule}: {reply}"
            );
            assert!(
                reply.contains("urn:toolgate:problem:rejected"),
                "{rule}: {reply}"
            );
        }
        assert_eq!(
            tool.received().len(),
            1,
            "{rule}: the tool received {:#?}",
            tool.received().last()
        );
    }
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: jira.test\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_paths_never_reach_the_tool() {
    let abs = |p: &str| get(&format!("http://jira.test{p}"));
    assert_refused(
        &[
            ("`..` segment", abs("/rest/api/3/issue/../issue/SUP-1")),
            ("`.` segment", abs("/rest/api/3/./issue/SUP-1")),
            ("percent-encoded `..`", abs("/rest/api/3/issue/%2e%2e/x")),
            ("percent-encoded `.`", abs("/rest/api/3/%2E/issue/SUP-1")),
            ("half-encoded `..`", abs("/rest/api/3/issue/.%2e/x")),
            ("encoded `/`", abs("/rest/api/3/issue/a%2fb")),
            ("encoded `\\`", abs("/rest/api/3/issue/a%5Cb")),
            ("encoded NUL", abs("/rest/api/3/issue/a%00b")),
            ("raw `\\`", abs("/rest/api/3/issue/a\\b")),
            ("`//`", abs("/rest//api/3/issue/X")),
            ("leading `//`", abs("//rest/api/3/issue/X")),
            (
                "`;` path parameter",
                abs("/rest/api/3/issue/SUP-1;jsessionid=x"),
            ),
            ("malformed escape", abs("/rest/api/3/issue/%zz")),
            ("origin-form `..`", get("/rest/api/3/issue/../issue/SUP-1")),
            (
                "named route `..`",
                get("/jira/rest/api/3/issue/../../admin"),
            ),
            (
                "named route encoded `/`",
                get("/jira/rest/api/3/issue/a%2Fb"),
            ),
        ],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn non_uppercase_methods_never_reach_the_tool() {
    let req = |m: &str| {
        format!("{m} http://jira.test/rest/api/3/issue/SUP-1 HTTP/1.1\r\nHost: jira.test\r\nConnection: close\r\n\r\n")
            .into_bytes()
    };
    assert_refused(
        &[
            ("lower-case get", req("get")),
            ("mixed-case Get", req("Get")),
        ],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn method_override_headers_never_reach_the_tool() {
    let with = |h: &str| {
        format!("GET http://jira.test/rest/api/3/issue/SUP-1 HTTP/1.1\r\nHost: jira.test\r\n{h}: DELETE\r\nConnection: close\r\n\r\n")
            .into_bytes()
    };
    assert_refused(
        &[
            ("X-HTTP-Method-Override", with("X-HTTP-Method-Override")),
            ("X-HTTP-Method", with("X-HTTP-Method")),
            ("X-Method-Override", with("X-Method-Override")),
        ],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_hosts_never_reach_the_tool() {
    assert_refused(
        &[
            (
                "duplicate Host",
                b"GET /rest/api/3/issue/SUP-1 HTTP/1.1\r\nHost: jira.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n".to_vec(),
            ),
            (
                "Host disagreeing with the absolute-form target",
                b"GET http://jira.test/rest/api/3/issue/SUP-1 HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n".to_vec(),
            ),
        ],
        // pingora answers a duplicate Host itself, with a bare 400.
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_never_reaches_the_tool() {
    let post = |framing: &str, body: &str| {
        format!("POST http://jira.test/rest/api/3/issue/SUP-1/transitions HTTP/1.1\r\nHost: jira.test\r\nContent-Type: application/json\r\n{framing}Connection: close\r\n\r\n{body}")
            .into_bytes()
    };
    let body = r#"{"transition":{"id":"11"}}"#;
    assert_refused(
        &[
            (
                "duplicate Content-Length",
                post(
                    &format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", body.len()),
                    body,
                ),
            ),
            (
                "Content-Length with Transfer-Encoding",
                post(
                    &format!(
                        "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                        body.len()
                    ),
                    &format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()),
                ),
            ),
        ],
        true,
    )
    .await;
}

fn classified(extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST http://jira.test/rest/api/3/issue/SUP-1/transitions HTTP/1.1\r\nHost: jira.test\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_classified_bodies_never_reach_the_tool() {
    let json = "Content-Type: application/json\r\n";
    let gzip = {
        // The gzip of `{"transition":{"id":"31"}}` would be classified by nobody: any bytes
        // declared as compressed are refused on a classified route.
        let mut b = vec![0x1f, 0x8b, 0x08, 0x00];
        b.extend_from_slice(br#"{"transition":{"id":"31"}}"#);
        b
    };
    assert_refused(
        &[
            (
                "duplicate key (a close hidden behind a harmless id)",
                classified(json, br#"{"transition":{"id":"11","id":"31"}}"#),
            ),
            (
                "duplicate top-level key",
                classified(
                    json,
                    br#"{"transition":{"id":"11"},"transition":{"id":"31"}}"#,
                ),
            ),
            (
                "Content-Encoding gzip",
                classified(&format!("{json}Content-Encoding: gzip\r\n"), &gzip),
            ),
            (
                "Content-Encoding br",
                classified(
                    &format!("{json}Content-Encoding: br\r\n"),
                    br#"{"transition":{"id":"11"}}"#,
                ),
            ),
            (
                "invalid UTF-8 in JSON",
                classified(json, b"{\"transition\":{\"id\":\"3\xff1\"}}"),
            ),
            (
                "lone surrogate escape",
                classified(json, br#"{"transition":{"id":"\ud800"}}"#),
            ),
            (
                "trailing data",
                classified(json, br#"{"transition":{"id":"11"}} {}"#),
            ),
            (
                "no content type",
                classified("", br#"{"transition":{"id":"31"}}"#),
            ),
            (
                "a content type tools may still parse as JSON",
                classified(
                    "Content-Type: text/plain\r\n",
                    br#"{"transition":{"id":"31"}}"#,
                ),
            ),
        ],
        true,
    )
    .await;
}

const READS_ONLY: &str = r#"
package toolgate
import rego.v1
default decision := {"allow": false, "reason": "not a read"}
decision := {"allow": true, "reason": "reads are fine"} if input.action.name in {"ticket.read", "ticket.search", "record.read"}
"#;

/// A jira tool that refuses overrides and a legacy tool that allows them, both served by
/// `tool`; policy allows reads only.
fn start_wide(tool: &ToolServer) -> Toolgate {
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {upstream}
    actions:
      - name: ticket.read
        match: {{ method: GET, path: "/rest/api/3/issue/{{issue}}" }}
        attributes: {{ issue: "path:issue" }}
      - name: ticket.search
        match: {{ method: GET, path: "/rest/api/3/search" }}
        attributes: {{ jql: "query:jql" }}
  - name: legacy
    hosts: [legacy.test]
    upstream: {upstream}
    overrides: allow
    actions:
      - name: record.read
        match: {{ method: GET, path: "/records/{{id}}" }}
policy: {{ files: [policy/*.rego] }}
limits: {{ connect_timeout: 2s, upstream_timeout: 5s, shutdown_timeout: 1s }}
"#,
        upstream = tool.url()
    );
    Toolgate::start(&config, &[("policy/main.rego", READS_ONLY)])
}

/// Send a raw request; its status and problem document (null if the tool answered).
async fn status_and_problem(
    proxy: std::net::SocketAddr,
    request: Vec<u8>,
) -> (u16, serde_json::Value) {
    let reply = tokio::task::spawn_blocking(move || send(proxy, &request))
        .await
        .unwrap();
    let status = reply.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Each request is refused 400 with a detail naming its rule, and reaches nothing.
async fn assert_named(tg: &Toolgate, tool: &ToolServer, cases: &[(&str, Vec<u8>, &str)]) {
    let before = tool.received().len();
    for (label, request, rule) in cases {
        let (status, problem) = status_and_problem(tg.proxy, request.clone()).await;
        assert_eq!(status, 400, "{label}: {problem}");
        assert_eq!(problem["type"], "urn:toolgate:problem:rejected", "{label}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(rule),
            "{label}: {detail:?} does not name {rule:?}"
        );
        assert_eq!(tool.received().len(), before, "{label} reached the tool");
    }
}

fn get_with(host: &str, target: &str, headers: &str) -> Vec<u8> {
    format!(
        "GET http://{host}{target} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn override_headers_and_parameters_never_reach_a_tool_that_does_not_allow_them() {
    let tool = ToolServer::http().await;
    let tg = start_wide(&tool);
    let read = "/rest/api/3/issue/SUP-1";
    let (status, _) = status_and_problem(tg.proxy, get_with("jira.test", read, "")).await;
    assert_eq!(status, 200, "{}", tg.logs());
    assert_eq!(tool.only().target, read);
    let h = |name: &str, value: &str| get_with("jira.test", read, &format!("{name}: {value}\r\n"));
    let method = "method-override header";
    let url = "URL-override header";
    let param = "method-override parameter \"_method\"";
    assert_named(
        &tg,
        &tool,
        &[
            (
                "X-HTTP-Method-Override",
                h("X-HTTP-Method-Override", "DELETE"),
                method,
            ),
            (
                "X_HTTP_Method_Override",
                h("X_HTTP_Method_Override", "DELETE"),
                method,
            ),
            ("x_http_method", h("x_http_method", "DELETE"), method),
            (
                "X-Method_Override",
                h("X-Method_Override", "DELETE"),
                method,
            ),
            ("X-Original-URL", h("X-Original-URL", "/admin"), url),
            ("X-Rewrite-URL", h("X-Rewrite-URL", "/admin"), url),
            ("X-Override-URL", h("X-Override-URL", "/admin"), url),
            ("X_Original_URL", h("X_Original_URL", "/admin"), url),
            (
                "_method in the query",
                get_with("jira.test", "/rest/api/3/issue/SUP-1?_method=DELETE", ""),
                param,
            ),
            (
                "_method, encoded",
                get_with("jira.test", "/rest/api/3/issue/SUP-1?%5Fmethod=DELETE", ""),
                "method-override parameter",
            ),
            // A host no tool serves gets no override either.
            (
                "towards an unknown host",
                get_with("elsewhere.test", "/x", "X-HTTP-Method-Override: DELETE\r\n"),
                method,
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_with_overrides_allow_receives_them_as_sent() {
    let tool = ToolServer::http().await;
    let tg = start_wide(&tool);
    let target = "/records/7?_method=GET";
    let request = get_with(
        "legacy.test",
        target,
        "X-HTTP-Method-Override: GET\r\nX_Original_URL: /records/7\r\n",
    );
    let (status, problem) = status_and_problem(tg.proxy, request).await;
    assert_eq!(status, 200, "{problem} {}", tg.logs());
    let got = tool.only();
    assert_eq!(got.target, target);
    assert_eq!(got.headers["x-http-method-override"], "GET");
    assert_eq!(got.headers["x_original_url"], "/records/7");
}

#[tokio::test(flavor = "multi_thread")]
async fn query_names_a_tool_reads_as_one_never_reach_it() {
    let tool = ToolServer::http().await;
    let tg = start_wide(&tool);
    // Brackets are sent encoded: toolgate encodes raw ones, which a URI may not hold.
    let search = "/rest/api/3/search?jql=project%3DSUP&fields=a&expand%5B%5D=x&expand%5B%5D=y";
    let (status, _) = status_and_problem(tg.proxy, get_with("jira.test", search, "")).await;
    assert_eq!(status, 200, "{}", tg.logs());
    assert_eq!(tool.only().target, search);
    let q = |query: &str| get_with("jira.test", &format!("/rest/api/3/search?{query}"), "");
    let collision = "are one parameter to some tools";
    let alias = "is read as \"jql\" by some tools";
    assert_named(
        &tg,
        &tool,
        &[
            (
                "jql and JQL",
                q("jql=project%3DSUP&JQL=project%3DHR"),
                collision,
            ),
            ("a.b and a_b", q("jql=x&a.b=1&a_b=2"), collision),
            ("Kelvin sign", q("jql=x&key=1&%E2%84%AAey=2"), collision),
            (
                "the attribute in another case",
                q("JQL=project%3DHR"),
                alias,
            ),
            ("the attribute as a list", q("jql[]=project%3DHR"), alias),
            ("the attribute as fields", q("jql[a]=project%3DHR"), alias),
        ],
    )
    .await;
    // The same collision on a path no attribute reads is still refused: policy may read
    // input.request.query directly.
    let (status, problem) = status_and_problem(
        tg.proxy,
        get_with("jira.test", "/rest/api/3/issue/SUP-1?fields=a&Fields=b", ""),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_segment_is_never_a_capture() {
    let tool = ToolServer::http().await;
    let tg = start_wide(&tool);
    // `/issue/` would have been ticket.read with issue "", which policy allows.
    let (status, problem) =
        status_and_problem(tg.proxy, get_with("jira.test", "/rest/api/3/issue/", "")).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["action"], "unknown");
    assert!(tool.received().is_empty(), "{:#?}", tool.received());
    let (status, _) = status_and_problem(
        tg.proxy,
        get_with("jira.test", "/rest/api/3/issue/SUP-1", ""),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(tool.only().target, "/rest/api/3/issue/SUP-1");
}
