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

/// A CONNECT tunnel to `tool.test:443` through `proxy`, its TLS (toolgate's leaf) trusted
/// through `ca_pem`: the decrypted side, ready for a request.
fn tunnel(
    proxy: std::net::SocketAddr,
    ca_pem: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut tcp = TcpStream::connect(proxy).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"CONNECT tool.test:443 HTTP/1.1\r\nHost: tool.test:443\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).unwrap(), 1, "the tunnel was refused");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("tool.test").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn inside_a_tls_tunnel_a_trickled_head_is_cut_and_a_whole_one_is_served() {
    let tool = Tool::start();
    let keep = tempfile::tempdir().unwrap();
    let (cert, key) = (keep.path().join("ca.pem"), keep.path().join("ca-key.pem"));
    let made = std::process::Command::new(support::binary())
        .args(["ca", "init", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let tg = start_with(
        &tool,
        "head_timeout: 1s",
        &format!(
            "tls: {{ ca: {{ cert: {}, key: {} }} }}",
            cert.display(),
            key.display()
        ),
    );
    let ca_pem = std::fs::read(&cert).unwrap();

    // Positive control: a whole request in a tunnel is served.
    let mut whole = tunnel(tg.proxy, &ca_pem);
    whole
        .write_all(b"GET /read/tls HTTP/1.1\r\nHost: tool.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = whole.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with(r#"{"ok":true}"#), "{answer}");

    // A head trickled in through the tunnel: cut at the deadline, answered over TLS.
    let mut slow = tunnel(tg.proxy, &ca_pem);
    slow.write_all(b"GET /read/slow HTTP/1.1\r\nHost: tool.test\r\nX-Slow: ")
        .unwrap();
    slow.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let began = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    while began.elapsed() < Duration::from_secs(20) && !closed {
        let _ = slow.write_all(b"x");
        match slow.read(&mut chunk) {
            Ok(0) => closed = true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => closed = true,
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        closed,
        "the trickled head in the tunnel was still open after 20 s: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.contains(r#""type":"urn:toolgate:problem:head-timeout""#),
        "{text}"
    );
    assert_eq!(tool.targets(), ["/read/tls"]);
}
