//! Slow clients: a head trickled in, a head too large, a connection that says nothing.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;

#[test]
fn a_head_trickled_in_is_cut_at_its_deadline_while_another_client_is_served() {
    let tool = Tool::start();
    let tg = start(&tool, "head_timeout: 1s");
    let proxy = tg.proxy;
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s.write_all(b"GET http://tool.test/read/slow HTTP/1.1\r\nHost: tool.test\r\nX-Slow: ")
            .unwrap();
        let began = Instant::now();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // A byte every 100 ms: each read toolgate makes gets data long before any per-read
        // timeout; only a deadline on the whole head ends this.
        while began.elapsed() < Duration::from_secs(20) {
            let _ = s.write_all(b"x");
            match s.read(&mut chunk) {
                Ok(0) => return (got, true),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return (got, true),
            }
        }
        (got, false)
    });
    // Positive control: while the head trickles in, another connection is served in full.
    std::thread::sleep(Duration::from_millis(300));
    assert_served(&tg, "1");

    let (got, closed) = slow.join().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        closed,
        "the trickled head was still open after 20 s: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.contains(r#""type":"urn:toolgate:problem:head-timeout""#),
        "{text}"
    );
    assert!(text.contains("limits.head_timeout"), "{text}");
    assert_eq!(
        tool.targets(),
        ["/read/1"],
        "the cut head never reached the tool"
    );
    assert_eq!(
        metric(
            &tg,
            r#"toolgate_request_heads_refused_total{reason="head_timeout"}"#
        ),
        1
    );
}

#[test]
fn a_head_over_the_limit_is_answered_431_and_one_under_it_reaches_the_tool_intact() {
    let tool = Tool::start();
    // The default limit, 64 KiB.
    let tg = start(&tool, "");
    let under = "u".repeat(60_000);
    let request = format!(
        "GET http://tool.test/read/big HTTP/1.1\r\nHost: tool.test\r\nX-Pad: {under}\r\nConnection: close\r\n\r\n"
    );
    let (answers, _) = exchange(tg.proxy, request.as_bytes(), 1);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    let got = tool.server.only();
    assert_eq!(got.target, "/read/big");
    assert_eq!(
        got.headers["x-pad"].as_bytes(),
        under.as_bytes(),
        "byte for byte"
    );

    let over = "o".repeat(70_000);
    let request = format!(
        "GET http://tool.test/read/huge HTTP/1.1\r\nHost: tool.test\r\nX-Pad: {over}\r\n\r\n"
    );
    let (answers, mut rest) = exchange(tg.proxy, request.as_bytes(), 1);
    assert_eq!(answers.len(), 1, "a problem answers the oversized head");
    assert_eq!(answers[0].status, 431);
    assert_eq!(
        problem_type(&answers[0]),
        "urn:toolgate:problem:head-too-large"
    );
    assert!(answers[0]
        .body
        .contains("65536 bytes (limits.max_head_bytes)"));
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert!(rest.closed(), "and the connection is closed");
    assert_eq!(
        tool.targets(),
        ["/read/big"],
        "the oversized head was not forwarded"
    );
    assert_eq!(
        metric(
            &tg,
            r#"toolgate_request_heads_refused_total{reason="head_too_large"}"#
        ),
        1
    );
    assert_served(&tg, "after");
}

#[test]
fn silent_connections_are_closed_and_kept_alive_ones_serve_requests_within_the_idle_time() {
    let tool = Tool::start();
    let tg = start(&tool, "idle_timeout: 2s");

    // Connected, never a byte: closed without an answer.
    let mut silent = Answers::new(TcpStream::connect(tg.proxy).unwrap());
    silent
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(silent.closed(), "closed without a word");

    // Kept alive: a second request soon after the first is served on the same connection…
    let (answers, mut kept) = exchange(tg.proxy, read_request("1").as_bytes(), 1);
    assert_eq!(answers[0].status, 200);
    std::thread::sleep(Duration::from_millis(100));
    kept.stream.write_all(read_request("2").as_bytes()).unwrap();
    let second = kept.next().expect("served on the kept-alive connection");
    assert_eq!(second.status, 200);
    assert_eq!(second.body, r#"{"ok":true}"#);
    let peers: Vec<_> = tool
        .server
        .received()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(peers, ["/read/1", "/read/2"]);
    // …and once it idles past limits.idle_timeout, toolgate closes it.
    kept.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(kept.closed(), "the idle kept-alive connection was closed");
}
