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

#[path = "limits/many.rs"]
mod many;
#[path = "limits/pipelined.rs"]
mod pipelined;
#[path = "limits/slow.rs"]
mod slow;
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
    start_with(tool, limits, "")
}

/// [`start`] with more top-level configuration (`extra`).
fn start_with(tool: &Tool, limits: &str, extra: &str) -> Toolgate {
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
{extra}
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
