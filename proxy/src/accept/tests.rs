use super::connect::parse;

#[test]
fn parses_authority_form_targets_and_headers() {
    let head = parse(
        b"CONNECT Jira.Test:443 HTTP/1.1\r\nHost: jira.test:443\r\nX-Toolgate-Task: T-1\r\n\r\n",
    )
    .unwrap();
    assert_eq!((head.host.as_str(), head.port), ("jira.test", 443));
    assert_eq!(head.headers["x-toolgate-task"], "T-1");
    let v6 = parse(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::1", 8443));
}

#[test]
fn refuses_targets_that_are_not_host_and_port() {
    for (head, says) in [
        (&b"CONNECT jira.test HTTP/1.1\r\n\r\n"[..], "authority-form"),
        (b"CONNECT jira.test:0 HTTP/1.1\r\n\r\n", "jira.test:0"),
        (b"CONNECT /path HTTP/1.1\r\n\r\n", "host"),
        (b"GET jira.test:443 HTTP/1.1\r\n\r\n", "expected CONNECT"),
        (
            b"CONNECT jira.test:443 HTTP/1.1\r\nBad Header\r\n\r\n",
            "malformed",
        ),
    ] {
        let err = parse(head).unwrap_err();
        assert!(
            err.contains(says),
            "{}: {err}",
            String::from_utf8_lossy(head)
        );
    }
    let many: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
    let err = parse(format!("CONNECT a.test:443 HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err();
    assert!(err.contains("more than 64"), "{err}");
}
