//! Secrets never come back (issue 14, point 3): a tool that echoes the request — in a JSON
//! body, base64-encoded, percent-encoded, JSON-escaped, split across SSE events — hands the
//! agent nothing of the credential toolgate injected; a `Set-Cookie` answering a credentialed
//! request is dropped; a compressed answer, which could not be checked, is withheld. Each
//! attack has its positive control: an answer without the credential arrives byte for byte.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use support::Toolgate;
use tokio::net::TcpListener;

const SECRET: &str = "tg-secret/8f3a+9c2e 71b4";

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// What the echo tool answers on each path, given the `authorization` header it received.
async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().into()))
        .collect();
    let echo = serde_json::json!({ "headers": headers }).to_string();
    let b64 = base64::engine::general_purpose::STANDARD;
    let resp = Response::builder().header("content-type", "application/json");
    let resp = match req.uri().path() {
        "/echo" => resp.body(full(echo)),
        "/echo-b64" => resp.body(full(b64.encode(format!("Authorization: {auth}")))),
        "/echo-url" => resp.body(full(format!(
            "{{\"next\":\"https://x.test/?auth={}\"}}",
            percent_encoding::utf8_percent_encode(&auth, percent_encoding::NON_ALPHANUMERIC)
        ))),
        "/echo-header" => resp
            .header("x-debug", format!("seen {}", b64.encode(&auth)))
            .body(full("{}")),
        "/sse" => {
            // The credential inside an event, in chunks of 5 bytes: split at every offset.
            let text = format!("data: {{\"a\":\"{auth}\"}}\n\ndata: done\n\n");
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let chunks: Vec<Bytes> = text
                .as_bytes()
                .chunks(5)
                .map(Bytes::copy_from_slice)
                .collect();
            tokio::spawn(async move {
                for c in chunks {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if tx.send(Frame::data(c)).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(ChannelBody(rx)))
        }
        "/cookie" => resp
            .header(
                "set-cookie",
                "session=opened-for-toolgates-credential; Path=/",
            )
            .header("set-cookie", "other=1")
            .body(full("{\"ok\":true}")),
        "/gzip" => resp
            .header("content-encoding", "gzip")
            .body(full(Bytes::from_static(
                b"\x1f\x8b\x08\x00 pretend-compressed",
            ))),
        _ => resp.body(full("{\"plain\":\"nothing to hide\"}")),
    };
    Ok(resp.unwrap())
}

/// A response body fed by a channel: each frame is sent as soon as it is produced.
struct ChannelBody(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

async fn echo_tool() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
    addr
}

fn start(tool: SocketAddr, signing: &str) -> Toolgate {
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: echo
    hosts: [echo.test]
    upstream: http://{tool}
    credential: echo-key
    actions:
      - {{ name: echo.any, match: {{ method: GET, path: "/{{p}}" }} }}
  - name: minted
    hosts: [minted.test]
    upstream: http://{tool}
    credential: echo-jwt
    actions:
      - {{ name: minted.any, match: {{ method: GET, path: "/{{p}}" }} }}
  - name: open
    hosts: [open.test]
    upstream: http://{tool}
    actions:
      - {{ name: open.any, match: {{ method: GET, path: "/{{p}}" }} }}
policy: {{ files: [policy.rego] }}
credentials:
  echo-key: {{ kind: secret, file: secrets/echo, header: Authorization, format: "Bearer {{}}" }}
  echo-jwt: {{ kind: jwt, audience: echo.test, key_file: keys/signing.pem, max_ttl: 60s }}
"#
    );
    Toolgate::start(
        &config,
        &[
            (
                "policy.rego",
                "package toolgate\nimport rego.v1\ndefault decision := true\n",
            ),
            ("secrets/echo", SECRET),
            ("keys/signing.pem", signing),
        ],
    )
}

fn signing_key() -> String {
    let out = std::process::Command::new(support::binary())
        .args(["keys", "init"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Every form the test knows the secret by, to look for in what the agent got.
fn leaks(text: &str, secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let pct = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let json = serde_json::to_string(secret).unwrap();
    let candidates = [
        secret.to_string(),
        pct,
        json.trim_matches('"').to_string(),
        b64.encode(secret),
        b64.encode(format!("Bearer {secret}")),
        // A long middle piece: a partial leak counts too.
        secret.get(3..secret.len() - 3).unwrap().to_string(),
    ];
    candidates
        .into_iter()
        .filter(|c| text.contains(c.as_str()))
        .collect()
}

async fn agent_sees(tg: &Toolgate, url: &str) -> (u16, String, String) {
    let resp = tg.forward_client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = format!("{:?}", resp.headers());
    let body = resp.text().await.unwrap();
    (status, headers, body)
}

#[tokio::test]
async fn an_echoed_secret_never_reaches_the_agent_in_any_form() {
    let tool = echo_tool().await;
    let tg = start(tool, &signing_key());
    for path in ["/echo", "/echo-b64", "/echo-url", "/echo-header", "/sse"] {
        let (status, headers, body) = agent_sees(&tg, &format!("http://echo.test{path}")).await;
        assert_eq!(status, 200, "{path}");
        let found = leaks(&format!("{headers}\n{body}"), SECRET);
        assert!(
            found.is_empty(),
            "{path} leaked {found:?}: {headers} {body}"
        );
        assert!(
            body.contains('*') || headers.contains("[redacted]"),
            "{path}: masked, not dropped: {body}"
        );
    }
    // The SSE stream still reads as events, the masked one included.
    let (_, _, sse) = agent_sees(&tg, "http://echo.test/sse").await;
    assert!(sse.ends_with("\n\ndata: done\n\n"), "{sse:?}");
    // The echo's length is kept: a masked JSON body still parses.
    let (_, _, echo) = agent_sees(&tg, "http://echo.test/echo").await;
    let parsed: serde_json::Value = serde_json::from_str(&echo).unwrap();
    let shown = parsed["headers"]["authorization"].as_str().unwrap();
    assert_eq!(
        shown,
        "*".repeat(SECRET.len() + 7),
        "masked in place, as long as it was"
    );

    // A minted JWT, new for each request, is masked the same way.
    let (status, headers, body) = agent_sees(&tg, "http://minted.test/echo-b64").await;
    assert_eq!(status, 200);
    assert!(!body.contains("ey") || body.contains('*'), "{body}");
    let (_, _, echo) = agent_sees(&tg, "http://minted.test/echo").await;
    let parsed: serde_json::Value = serde_json::from_str(&echo).unwrap();
    let shown = parsed["headers"]["authorization"].as_str().unwrap();
    let token = shown.strip_prefix("Bearer ").unwrap();
    assert!(
        token.len() > 100 && token.bytes().all(|b| b == b'*'),
        "{shown} {headers}"
    );

    // The positive control: an answer that holds no credential arrives byte for byte, and a
    // tool without a credential is echoed unchanged.
    let (_, _, plain) = agent_sees(&tg, "http://echo.test/plain").await;
    assert_eq!(plain, "{\"plain\":\"nothing to hide\"}");
    let resp = tg
        .forward_client()
        .get("http://open.test/echo")
        .header("x-agent-note", "mine")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-agent-note"], "mine");

    let (_, metrics) = support::http_get(tg.admin, "/metrics").unwrap();
    assert!(
        metrics.contains("toolgate_response_scrubbed_total{what=\"masked\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn set_cookie_for_the_credential_is_dropped_and_compressed_answers_are_withheld() {
    let tool = echo_tool().await;
    let tg = start(tool, &signing_key());
    let resp = tg
        .forward_client()
        .get("http://echo.test/cookie")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("set-cookie").is_none(),
        "{:?}",
        resp.headers()
    );
    assert_eq!(resp.text().await.unwrap(), "{\"ok\":true}");

    // toolgate asked for identity; the tool answered gzip anyway: the agent gets a problem.
    let resp = tg
        .forward_client()
        .get("http://echo.test/gzip")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    let (status, body) = support::problem(resp).await;
    assert_eq!(status, 502);
    assert_eq!(
        body["type"], "urn:toolgate:problem:unchecked-response",
        "{body}"
    );

    // Positive control: without an injected credential, cookies and encodings pass.
    let resp = tg
        .forward_client()
        .get("http://open.test/cookie")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers().get_all("set-cookie").iter().count(), 2);
    let resp = tg
        .forward_client()
        .get("http://open.test/gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");

    // The tool was asked for an uncompressed answer whenever a credential went with it.
    let (_, metrics) = support::http_get(tg.admin, "/metrics").unwrap();
    assert!(
        metrics.contains("toolgate_response_scrubbed_total{what=\"set_cookie\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("toolgate_response_scrubbed_total{what=\"compressed_body\"} 1"),
        "{metrics}"
    );
}
