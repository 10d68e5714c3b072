//! Pipelined clients: requests written back to back on one connection.

use super::*;

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
