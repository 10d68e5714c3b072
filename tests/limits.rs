//! Slow, many and pipelined clients (issue 14, point 5), through the real binary: a head
//! trickled in is cut at its deadline, an oversized head is answered 431, silent connections
//! are closed, a flood past the connection cap is refused and counted while the probes answer,
//! unfinished heads pin bounded memory that goes back when they close, and requests written
//! back to back are answered in order. Each bound is read from /proc/<pid> — resident memory
//! (and its peak) and open descriptors — under the flood and after it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::{http_get, Answer, ToolServer, Toolgate};

/// Floods measure one process each and load the machine: one at a time, so that the numbers
/// each reads are its own.
static FLOODS: Mutex<()> = Mutex::new(());

fn flood_lock() -> MutexGuard<'static, ()> {
    FLOODS.lock().unwrap_or_else(|e| e.into_inner())
}

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "allowed"} if input.action.name in {"tool.read", "tool.write"}
"#;

/// A tool on loopback and its own runtime; the runtime outlives the tool.
struct Tool {
    server: ToolServer,
    _rt: tokio::runtime::Runtime,
}

impl Tool {
    fn start() -> Tool {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = rt.block_on(ToolServer::http());
        Tool { server, _rt: rt }
    }

    /// The targets the tool received, in order.
    fn targets(&self) -> Vec<String> {
        self.server
            .received()
            .into_iter()
            .map(|r| r.target)
            .collect()
    }
}

/// toolgate in front of `tool` (host `tool.test`), with `limits` inside `limits: { … }`.
fn start(tool: &Tool, limits: &str) -> Toolgate {
    let config = format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: tool
    hosts: [tool.test]
    upstream: {}
    actions:
      - {{ name: tool.read, match: {{ method: GET, path: "/read/{{n}}" }} }}
      - {{ name: tool.write, match: {{ method: POST, path: "/write" }} }}
      - {{ name: tool.forbidden, match: {{ method: POST, path: "/forbidden" }} }}
policy: {{ files: [policy.rego] }}
limits: {{ {limits} }}
"#,
        tool.server.url()
    );
    Toolgate::start(&config, &[("policy.rego", POLICY)])
}

/// `GET /read/{n}` in absolute form, as a client honouring HTTP_PROXY sends it.
fn read_request(n: &str) -> String {
    format!("GET http://tool.test/read/{n} HTTP/1.1\r\nHost: tool.test\r\n\r\n")
}

/// Answers read off one connection, one HTTP/1.1 response at a time.
struct Answers {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Answers {
    fn new(stream: TcpStream) -> Answers {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Answers {
            stream,
            buf: Vec::new(),
        }
    }

    /// Read more bytes.
    fn fill(&mut self) -> Fill {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => Fill::Closed,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Fill::Data
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Fill::Silent
            }
            Err(_) => Fill::Closed,
        }
    }

    /// The next response, whose body is framed by `content-length`; `None` if the connection
    /// ends first.
    fn next(&mut self) -> Option<Answer> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill() != Fill::Data {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end - 4]).into_owned();
        let mut answer = Answer {
            status: head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0),
            head,
            body: String::new(),
        };
        let length: usize = answer
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while self.buf.len() < end + length {
            if self.fill() != Fill::Data {
                return None;
            }
        }
        answer.body = String::from_utf8_lossy(&self.buf[end..end + length]).into_owned();
        self.buf.drain(..end + length);
        Some(answer)
    }

    /// Whether the connection is closed (or reset) with nothing more to read; `false` if the
    /// read timeout passes first.
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == Fill::Closed
    }
}

/// What one read from a connection found.
#[derive(Debug, PartialEq, Eq)]
enum Fill {
    Data,
    Closed,
    Silent,
}

/// Send `bytes` on a new connection to `addr` and read `count` answers.
fn exchange(addr: SocketAddr, bytes: &[u8], count: usize) -> (Vec<Answer>, Answers) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(bytes).unwrap();
    let mut answers = Answers::new(stream);
    let got = (0..count).map_while(|_| answers.next()).collect();
    (got, answers)
}

/// One allowed request on its own connection: the positive control of every test here.
fn assert_served(tg: &Toolgate, n: &str) {
    let (answers, _) = exchange(tg.proxy, read_request(n).as_bytes(), 1);
    let answer = answers.first().unwrap_or_else(|| {
        panic!(
            "no answer to GET /read/{n}\n{}",
            tg.logs()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, r#"{"ok":true}"#);
}

/// The problem `type` of `answer`, which must be a problem document.
fn problem_type(answer: &Answer) -> String {
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{} {}",
        answer.status,
        answer.body
    );
    let body = answer.json();
    assert_eq!(body["status"], answer.status);
    body["type"].as_str().unwrap_or_default().to_string()
}

/// The value of the metric series `series` (name and labels exactly as rendered), 0 if absent.
fn metric(tg: &Toolgate, series: &str) -> u64 {
    let (status, body) = http_get(tg.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Wait (up to 30 s) until `check` holds for the metric `series`; returns its last value.
fn wait_metric(tg: &Toolgate, series: &str, check: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = metric(tg, series);
        if check(value) || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A line of /proc/<pid>/status, in MiB (`VmRSS`: resident now; `VmHWM`: the peak).
fn memory_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Descriptors open in the process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Poll `measure` (up to 20 s) until it is at most `bound`; returns the last measure.
fn settles_to(bound: u64, measure: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = measure();
        if now <= bound || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Raise this test process's soft open-file limit to its hard limit; returns the soft limit.
fn raise_own_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// What is readable on `stream` right now without waiting: `None` when nothing is.
fn pending(stream: &mut TcpStream) -> Option<String> {
    stream.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => break,
        }
    }
    (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

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

#[test]
fn a_flood_past_the_connection_cap_is_refused_and_counted_while_probes_answer() {
    let _one = flood_lock();
    let soft = raise_own_fd_limit();
    let n = 2000.min(usize::try_from(soft.saturating_sub(300)).unwrap_or(2000));
    let cap = n / 10;
    assert!(
        cap >= 10,
        "the test's open-file limit ({soft}) leaves no room for a flood"
    );
    let tool = Tool::start();
    let tg = start(&tool, &format!("max_connections: {cap}"));
    let pid = tg.pid();
    assert_served(&tg, "warm");
    let fds_before = open_fds(pid);

    let mut flood: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(tg.proxy).unwrap())
        .collect();
    let refused = wait_metric(
        &tg,
        r#"toolgate_connections_refused_total{listener="proxy"}"#,
        |v| v >= (n - cap) as u64,
    );
    assert_eq!(
        refused,
        (n - cap) as u64,
        "every connection past the cap is counted"
    );
    let open = metric(&tg, r#"toolgate_connections_open{listener="proxy"}"#);
    assert_eq!(open, cap as u64);
    // The probes answer while the proxy port is full.
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(http_get(tg.admin, probe).unwrap().0, 200, "{probe}");
    }
    // Descriptors: the admitted connections, and at most 64 refusals still lingering.
    let fds_during = open_fds(pid);
    assert!(
        fds_during <= fds_before + cap + 64 + 16,
        "{fds_during} descriptors open under the flood ({fds_before} before, cap {cap})"
    );
    let rss_during = memory_mib(pid, "VmRSS");
    assert!(
        rss_during < 200,
        "{rss_during} MiB resident under the flood"
    );

    // Each refused connection was told why; the admitted ones are waiting for a request.
    std::thread::sleep(Duration::from_millis(300));
    let mut answered = 0;
    let mut waiting = 0;
    for stream in &mut flood {
        match pending(stream) {
            Some(text) => {
                assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
                assert!(text.contains(r#""type":"urn:toolgate:problem:overloaded""#));
                assert!(text.contains("limits.max_connections"), "{text}");
                answered += 1;
            }
            None => waiting += 1,
        }
    }
    assert_eq!((answered, waiting), (n - cap, cap));

    drop(flood);
    let open = wait_metric(&tg, r#"toolgate_connections_open{listener="proxy"}"#, |v| {
        v == 0
    });
    assert_eq!(open, 0);
    let fds_after = settles_to(fds_before as u64 + 2, || open_fds(pid) as u64);
    assert!(
        fds_after <= fds_before as u64 + 2,
        "{fds_after} descriptors after the flood, {fds_before} before"
    );
    assert_served(&tg, "after");
}

/// Open `count` connections, each sending `bytes` of a head that never ends.
fn unfinished_heads(addr: SocketAddr, count: usize, bytes: usize) -> Vec<TcpStream> {
    let mut head =
        b"GET http://tool.test/read/held HTTP/1.1\r\nHost: tool.test\r\nX-Pad: ".to_vec();
    head.resize(bytes, b'p');
    (0..count)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            // Whatever the kernel takes: toolgate stops reading at its limit.
            s.set_nonblocking(true).unwrap();
            let mut sent = 0;
            while sent < head.len() {
                match s.write(&head[sent..]) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            s
        })
        .collect()
}

#[test]
fn unfinished_heads_pin_bounded_memory_that_goes_back_when_they_close() {
    let _one = flood_lock();
    raise_own_fd_limit();
    let tool = Tool::start();
    let tg = start(&tool, "max_connections: 600, head_timeout: 60s");
    let pid = tg.pid();
    assert_served(&tg, "warm");
    let base = memory_mib(pid, "VmRSS");
    let fds_before = open_fds(pid);

    // The attack of issue 14: heads of 1 MiB that never end. Before the head limit, 220 of
    // them took toolgate past 256 MiB.
    let attack = unfinished_heads(tg.proxy, 300, 1 << 20);
    let cut = wait_metric(
        &tg,
        r#"toolgate_request_heads_refused_total{reason="head_too_large"}"#,
        |v| v >= 300,
    );
    assert_eq!(cut, 300, "each 1 MiB head is refused at 64 KiB");
    let peak = memory_mib(pid, "VmHWM");
    assert!(
        peak < base + 128,
        "peak {peak} MiB resident under 300 heads of 1 MiB (idle: {base} MiB)"
    );
    drop(attack);

    // Heads just under the limit, held open: the most memory a connection can pin.
    let held = unfinished_heads(tg.proxy, 400, 60_000);
    let buffered = wait_metric(&tg, "toolgate_buffered_bytes", |v| v >= 400 * 60_000);
    assert_eq!(
        buffered,
        400 * 60_000,
        "every held byte is charged to the budget"
    );
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(http_get(tg.admin, probe).unwrap().0, 200, "{probe}");
    }
    let during = memory_mib(pid, "VmRSS");
    let peak = memory_mib(pid, "VmHWM");
    assert!(
        peak < base + 160,
        "peak {peak} MiB under 400 held heads of 60 KB (idle: {base} MiB)"
    );
    let fds_during = open_fds(pid);
    assert!(
        fds_during <= fds_before + 400 + 16,
        "{fds_during} descriptors"
    );

    drop(held);
    let buffered = wait_metric(&tg, "toolgate_buffered_bytes", |v| v == 0);
    assert_eq!(buffered, 0, "every charge is given back");
    let after = settles_to(base + 40, || memory_mib(pid, "VmRSS"));
    assert!(
        after <= base + 40 && after + 16 <= during,
        "{after} MiB resident after the heads closed ({during} MiB with them, {base} MiB idle)"
    );
    let fds_after = settles_to(fds_before as u64 + 2, || open_fds(pid) as u64);
    assert!(
        fds_after <= fds_before as u64 + 2,
        "{fds_after} descriptors after"
    );
    assert_served(&tg, "after");
}

#[test]
fn a_spent_buffer_budget_answers_new_heads_503_until_held_heads_close() {
    let _one = flood_lock();
    let tool = Tool::start();
    // Room for about 17 heads of 60 KB.
    let tg = start(&tool, "max_buffered_bytes: 1048576, head_timeout: 60s");
    let mut held = unfinished_heads(tg.proxy, 24, 60_000);
    let series = r#"toolgate_request_heads_refused_total{reason="buffers_full"}"#;
    wait_metric(&tg, series, |v| v >= 7);
    // Every head was sent at once: within a second each is either charged whole or refused.
    std::thread::sleep(Duration::from_secs(1));
    let full = metric(&tg, series);
    assert!(full >= 7, "{full} heads refused for the spent budget");
    assert!(metric(&tg, "toolgate_buffered_bytes") <= 1_048_576);
    let mut answered = 0;
    for stream in &mut held {
        if let Some(text) = pending(stream) {
            assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
            assert!(text.contains(r#""type":"urn:toolgate:problem:overloaded""#));
            assert!(text.contains("limits.max_buffered_bytes"), "{text}");
            answered += 1;
        }
    }
    assert_eq!(answered as u64, full, "each refused head was told why");

    drop(held);
    assert_eq!(wait_metric(&tg, "toolgate_buffered_bytes", |v| v == 0), 0);
    assert_served(&tg, "after");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let tool = Tool::start();
    let tg = start(&tool, "");

    let two = format!("{}{}", read_request("1"), read_request("2"));
    let (answers, _) = exchange(tg.proxy, two.as_bytes(), 2);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200]);
    assert_eq!(tool.targets(), ["/read/1", "/read/2"]);

    // Allowed, denied, allowed: toolgate's own answer keeps its place between the tool's.
    let three = format!(
        "{}POST http://tool.test/forbidden HTTP/1.1\r\nHost: tool.test\r\nContent-Length: 0\r\n\r\n{}",
        read_request("3"),
        read_request("4")
    );
    let (answers, _) = exchange(tg.proxy, three.as_bytes(), 3);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 403, 200]);
    assert_eq!(problem_type(&answers[1]), "urn:toolgate:problem:denied");
    assert_eq!(answers[1].json()["action"], "tool.forbidden");
    assert_eq!(answers[2].body, r#"{"ok":true}"#);
    assert_eq!(
        tool.targets(),
        ["/read/1", "/read/2", "/read/3", "/read/4"],
        "the denied request never reached the tool"
    );
}

#[test]
fn a_request_pipelined_after_a_body_is_answered_and_the_body_reaches_the_tool_intact() {
    let tool = Tool::start();
    let tg = start(&tool, "");
    let body = r#"{"title":"pipelined","n":1}"#;
    let bytes = format!(
        "POST http://tool.test/write HTTP/1.1\r\nHost: tool.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}{}",
        body.len(),
        read_request("5")
    );
    let (answers, _) = exchange(tg.proxy, bytes.as_bytes(), 2);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200]);
    let got = tool.server.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].target, "/write");
    assert_eq!(got[0].body.as_ref(), body.as_bytes(), "byte for byte");
    assert_eq!(got[1].target, "/read/5");
}

#[test]
fn a_refused_request_with_an_unread_body_ends_the_connection_and_what_follows_is_not_forwarded() {
    let tool = Tool::start();
    let tg = start(&tool, "");
    // toolgate answers the denial without reading the body: the bytes after the head cannot
    // be told apart from the next request, so it closes (Connection: close) rather than guess.
    let bytes = format!(
        "POST http://tool.test/forbidden HTTP/1.1\r\nHost: tool.test\r\nContent-Length: 5\r\n\r\nhello{}",
        read_request("6")
    );
    let (answers, mut rest) = exchange(tg.proxy, bytes.as_bytes(), 2);
    assert_eq!(answers.len(), 1, "one answer, then the connection ends");
    assert_eq!(answers[0].status, 403);
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert!(rest.closed());
    assert!(tool.targets().is_empty(), "nothing reached the tool");
    // Positive control: the client's retry on a new connection is served.
    assert_served(&tg, "6");
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    use rustix::process::{getrlimit, Resource};
    let hard = getrlimit(Resource::Nofile)
        .maximum
        .expect("a finite hard limit");
    let soft = 512.min(hard);
    let dir = tempfile::tempdir().unwrap();
    let proxy = support::free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    support::write(dir.path(), "policy.rego", POLICY);
    support::write(
        dir.path(),
        "toolgate.yaml",
        &format!(
            "listen: {{ proxy: \"127.0.0.1:{proxy}\", admin: \"{admin}\" }}\nagent: {{ id: a }}\npolicy: {{ files: [policy.rego] }}\n"
        ),
    );
    let log = std::fs::File::create(dir.path().join("toolgate.log")).unwrap();
    // The shell lowers the soft limit, then becomes toolgate (same pid).
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -Sn {soft} && exec \"$0\" run -c \"$1\""))
        .arg(support::binary())
        .arg(dir.path().join("toolgate.yaml"))
        .env("TOOLGATE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(admin, "/readyz").map(|(s, _)| s).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "toolgate did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, [hard.to_string(), hard.to_string()], "{line}");
    let logged = std::fs::read_to_string(dir.path().join("toolgate.log")).unwrap();
    if soft < hard {
        assert!(
            logged.contains("raised the open-file limit"),
            "the raise is logged:\n{logged}"
        );
    }
}

#[test]
fn probes_answer_while_the_admin_port_is_flooded() {
    let _one = flood_lock();
    raise_own_fd_limit();
    let tool = Tool::start();
    let tg = start(&tool, "");
    let pid = tg.pid();
    let fds_before = open_fds(pid);
    // More idle connections than the admin listener keeps: the oldest make room.
    let flood: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(tg.admin).unwrap())
        .collect();
    for probe in ["/healthz", "/readyz", "/healthz"] {
        assert_eq!(http_get(tg.admin, probe).unwrap().0, 200, "{probe}");
    }
    let evicted = metric(
        &tg,
        r#"toolgate_connections_refused_total{listener="admin"}"#,
    );
    assert!(
        evicted >= 200 - 64,
        "{evicted} admin connections closed for newer ones"
    );
    let fds_during = settles_to(fds_before as u64 + 64 + 8, || open_fds(pid) as u64);
    assert!(
        fds_during <= fds_before as u64 + 64 + 8,
        "{fds_during} descriptors with the admin port flooded ({fds_before} before)"
    );
    drop(flood);
    assert_served(&tg, "1");
}
