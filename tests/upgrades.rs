//! Upgrades (issue 14, point 1): a `101` turns a connection into a raw tunnel whose later bytes
//! — requests policy would deny included — reach the tool unclassified. From the agent's side:
//! an `Upgrade` the action does not declare is stripped before forwarding, a tool that
//! switches anyway gets the agent a 502 and the connection closed, so a denied request sent
//! after it never reaches the tool; `h2c` is always refused. The positive controls: a plain
//! request passes byte for byte, and an action that declares `upgrade: websocket` tunnels,
//! with its bytes and duration on its span.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/otlp.rs"]
mod otlp;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::Toolgate;

/// How the fake tool answers a request head.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 101 only to `Upgrade: websocket`, then echoes; 200 otherwise.
    Honest,
    /// 101 to every request, whatever it asked, then swallows what follows.
    AlwaysSwitches,
}

/// A raw HTTP/1.1 tool that records every byte it receives on every connection.
struct Tool {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Tool {
    fn start(mode: Mode) -> Tool {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<u8>>> = Arc::default();
        let rec = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let rec = rec.clone();
                std::thread::spawn(move || serve(stream, mode, &rec));
            }
        });
        Tool { addr, received }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

fn serve(stream: TcpStream, mode: Mode, rec: &Mutex<Vec<u8>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            rec.lock().unwrap().extend_from_slice(line.as_bytes());
            let done = line == "\r\n";
            head.push_str(&line);
            if done {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        let upgrade = lower.contains("\r\nupgrade: websocket");
        if mode == Mode::AlwaysSwitches || upgrade {
            let _ = out.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            );
            // The tunnel: record what arrives; an honest tool echoes it.
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    return;
                }
                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                if mode == Mode::Honest && out.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            return;
        }
        let body = b"{\"ok\":true}";
        let _ = out.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        let _ = out.write_all(body);
    }
}

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": true}

decision := {"allow": false, "reason": "deleting needs a human"} if input.action.name == "chat.delete"
"#;

fn start(tool: &Tool, otlp: Option<&str>) -> Toolgate {
    let telemetry = otlp
        .map(|e| format!("telemetry: {{ otlp: {{ endpoint: \"{e}\", protocol: http }} }}"))
        .unwrap_or_default();
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: chat
    hosts: [chat.test]
    upstream: http://{addr}
    actions:
      - {{ name: chat.stream, match: {{ method: GET, path: /stream, upgrade: websocket }} }}
      - {{ name: chat.read, match: {{ method: GET, path: /stream }} }}
      - {{ name: chat.history, match: {{ method: GET, path: /history }} }}
      - {{ name: chat.delete, match: {{ method: POST, path: /admin/delete }} }}
policy: {{ files: [policy.rego] }}
limits: {{ connect_timeout: 2s, upstream_timeout: 10s, shutdown_timeout: 1s }}
{telemetry}
"#,
        addr = tool.addr
    );
    Toolgate::start_with_env(
        &config,
        &[("policy.rego", POLICY)],
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    )
}

/// Read one response head (and a content-length body) from `s`.
fn read_response(s: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).unwrap_or(0) == 0 {
            return head;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

fn connect(tg: &Toolgate) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(tg.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

const ASK_UPGRADE_HISTORY: &str = "GET http://chat.test/history HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const DELETE: &str =
    "POST http://chat.test/admin/delete HTTP/1.1\r\nHost: chat.test\r\nContent-Length: 2\r\n\r\n{}";

#[test]
fn a_101_for_an_action_that_may_not_upgrade_never_becomes_a_tunnel() {
    let tool = Tool::start(Mode::AlwaysSwitches);
    let tg = start(&tool, None);
    let (mut s, mut r) = connect(&tg);

    // The attack: ask to upgrade on an action that does not declare it, to a tool that
    // switches whatever it is asked; then send what policy denies down the "tunnel".
    s.write_all(ASK_UPGRADE_HISTORY.as_bytes()).unwrap();
    let answer = read_response(&mut r);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(
        answer.contains("urn:toolgate:problem:unexpected-upgrade"),
        "{answer}"
    );
    let _ = s.write_all(DELETE.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);

    let seen = tool.received();
    assert!(seen.starts_with("GET /history HTTP/1.1\r\n"), "{seen}");
    let lower = seen.to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade: websocket"),
        "the Upgrade was stripped: {seen}"
    );
    assert!(!lower.contains("connection: keep-alive, upgrade"), "{seen}");
    assert!(
        !seen.contains("/admin/delete"),
        "the denied request never reached the tool: {seen}"
    );
}

#[test]
fn an_upgrade_the_action_does_not_declare_is_forwarded_as_a_plain_request() {
    let tool = Tool::start(Mode::Honest);
    let tg = start(&tool, None);
    let (mut s, mut r) = connect(&tg);
    s.write_all(ASK_UPGRADE_HISTORY.as_bytes()).unwrap();
    let answer = read_response(&mut r);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"ok\":true}"), "{answer}");
    // The connection stays HTTP: the next request is decided like any other.
    s.write_all(DELETE.as_bytes()).unwrap();
    let denied = read_response(&mut r);
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    let seen = tool.received();
    assert!(!seen.to_ascii_lowercase().contains("upgrade"), "{seen}");
    assert!(!seen.contains("/admin/delete"), "{seen}");
}

#[test]
fn h2c_is_always_refused() {
    let tool = Tool::start(Mode::Honest);
    let tg = start(&tool, None);
    for ask in [
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings\r\n",
        "Upgrade: websocket, h2c\r\nConnection: Upgrade\r\n",
        "HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    ] {
        let (mut s, mut r) = connect(&tg);
        s.write_all(
            format!("GET http://chat.test/history HTTP/1.1\r\nHost: chat.test\r\n{ask}\r\n")
                .as_bytes(),
        )
        .unwrap();
        let answer = read_response(&mut r);
        assert!(answer.starts_with("HTTP/1.1 400"), "{ask}: {answer}");
        assert!(answer.contains("h2c"), "{answer}");
    }
    assert_eq!(tool.received(), "", "the tool saw nothing");
    // The positive control: the same request without the upgrade.
    let (mut s, mut r) = connect(&tg);
    s.write_all(b"GET http://chat.test/history HTTP/1.1\r\nHost: chat.test\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut r).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn an_action_that_declares_websocket_tunnels_and_its_span_says_how_much() {
    let tool = Tool::start(Mode::Honest);
    let receiver = otlp::Receiver::http().await;
    let tg = start(&tool, Some(&receiver.endpoint()));
    let proxy = tg.proxy;
    let echoed = tokio::task::spawn_blocking(move || {
        let s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut s = s;
        s.write_all(
            b"GET http://chat.test/stream HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let head = read_response(&mut r);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"frame-one").unwrap();
        let mut echo = [0u8; 9];
        r.read_exact(&mut echo).unwrap();
        drop(s);
        String::from_utf8_lossy(&echo).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(echoed, "frame-one");
    assert!(tool
        .received()
        .to_ascii_lowercase()
        .contains("upgrade: websocket"));

    let spans = receiver.wait_for(1).await;
    let span = &spans
        .iter()
        .find(|s| s.span.name == "chat.stream")
        .expect("the tunnel's span")
        .span;
    assert_eq!(
        otlp::string(&span.attributes, "toolgate.upgrade"),
        Some("websocket")
    );
    assert_eq!(
        otlp::int(&span.attributes, "toolgate.tunnel.bytes_to_tool"),
        Some(9)
    );
    assert_eq!(
        otlp::int(&span.attributes, "toolgate.tunnel.bytes_from_tool"),
        Some(9)
    );
    assert!(otlp::int(&span.attributes, "toolgate.tunnel.duration_ms").is_some());
}
