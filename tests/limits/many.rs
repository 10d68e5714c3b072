//! Many clients: floods of connections, of unfinished heads and of admin connections,
//! measured in toolgate's /proc/<pid> under the flood and after it; the open-file limit.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::*;

/// Open `count` connections, each sending `bytes` of a head that never ends — at least the
/// first 128 KiB of it (past any head limit), the rest as far as the kernel takes it without
/// waiting: toolgate stops reading at its limit.
fn unfinished_heads(addr: SocketAddr, count: usize, bytes: usize) -> Vec<TcpStream> {
    let mut head =
        b"GET http://tool.test/read/held HTTP/1.1\r\nHost: tool.test\r\nX-Pad: ".to_vec();
    head.resize(bytes, b'p');
    let must = bytes.min(128 * 1024);
    (0..count)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            let patience = Instant::now() + Duration::from_secs(2);
            let mut sent = 0;
            while sent < head.len() {
                match s.write(&head[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && sent < must => {
                        if Instant::now() > patience {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => break,
                }
            }
            s
        })
        .collect()
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
