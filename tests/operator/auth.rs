//! Who may use the operator API: the agent on loopback without the token, with a wrong one,
//! through other spellings of the path, on the socket; and the API off when nothing protects it.

use std::os::unix::fs::PermissionsExt as _;

use crate::support::{
    self, http_get, operator, operator_json, request, request_unix, ToolServer, Toolgate,
    OPERATOR_TOKEN,
};
use crate::{
    config, metric, problem_type, read_ticket, refused_start, revoke_body, socket, start,
    start_with_socket, POLICY, TOKEN_CONFIG,
};

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_on_loopback_cannot_use_the_operator_api_without_the_token() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, TOKEN_CONFIG);
    let body = revoke_body("task", "T-victim", Some("1h"));
    let wrong = "Bearer 0f4e8d2c6a1b9f3e7d5c0b8a2e6f4d1c9b7a3e5e";
    let right = format!("Bearer {OPERATOR_TOKEN}");
    let json = ("Content-Type", "application/json");

    // The agent tries without a token, with a wrong one, with the right one in the wrong
    // scheme, and with two headers.
    let attempts: Vec<Vec<(&str, &str)>> = vec![
        vec![json],
        vec![json, ("Authorization", wrong)],
        vec![json, ("Authorization", "Basic b3BlcmF0b3I6b3BlcmF0b3I=")],
        vec![json, ("Authorization", OPERATOR_TOKEN)],
        vec![json, ("Authorization", wrong), ("Authorization", &right)],
    ];
    for headers in &attempts {
        let answer = request(tg.admin, "POST", "/v1/revoke", headers, body.as_bytes());
        assert_eq!(answer.status, 401, "{headers:?}: {answer:?}");
        assert_eq!(problem_type(&answer), "operator-unauthorized");
        assert!(
            answer
                .header("www-authenticate")
                .unwrap()
                .starts_with("Bearer"),
            "{answer:?}"
        );
    }
    // Reads are operator endpoints too.
    for path in ["/v1/revoke", "/v1/tasks", "/v1/tasks/T-victim", "/v1/nope"] {
        let answer = request(tg.admin, "GET", path, &[], b"");
        assert_eq!(answer.status, 401, "{path}: {answer:?}");
    }
    // Other spellings of the path reach no endpoint at all.
    let mut refused = 0;
    for path in [
        "//v1/revoke",
        "/V1/revoke",
        "/./v1/revoke",
        "/%76%31/revoke",
        "/v1%2Frevoke",
        "/v1/revoke/",
    ] {
        let answer = request(tg.admin, "POST", path, &[json], body.as_bytes());
        assert!(
            [401, 404].contains(&answer.status),
            "{path}: {}",
            answer.status
        );
        refused += u64::from(answer.status == 401);
    }
    let failures = attempts.len() as u64 + 4 + refused;
    assert_eq!(
        metric(
            &tg,
            "toolgate_operator_auth_failures_total{listener=\"admin\"}"
        ),
        Some(failures),
        "each 401 is counted"
    );
    assert!(tg.wait_for_log("operator authentication failed"));
    let logs = tg.logs() + &tg.stdout();
    assert!(
        logs.contains("peer=127.0.0.1:"),
        "the peer is logged: {logs}"
    );
    assert!(
        !logs.contains(wrong.trim_start_matches("Bearer ")),
        "a presented token was logged"
    );
    assert!(
        !logs.contains(OPERATOR_TOKEN),
        "the operator token was logged"
    );
    // Nothing was revoked: the victim's task still works.
    assert_eq!(read_ticket(&tg, "T-victim").await.0, 200);

    // Positive control: the operator, with the token, revokes the task, and it takes effect.
    let answer = operator(tg.admin, "POST", "/v1/revoke", Some(&body));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["revoked"]["id"], "T-victim");
    let (status, problem) = read_ticket(&tg, "T-victim").await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (403, Some("urn:toolgate:problem:revoked"))
    );
    assert_eq!(read_ticket(&tg, "T-other").await.0, 200);
    assert_eq!(
        tool.received().len(),
        2,
        "the revoked read never reached the tool"
    );
    let listed = operator_json(tg.admin, "/v1/revoke");
    assert_eq!(
        listed["revocations"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    // Probes, metrics and keys need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/.well-known/jwks.json"] {
        assert_eq!(http_get(tg.admin, path).unwrap().0, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_socket_is_authenticated_by_the_filesystem_and_by_the_token_when_set() {
    let tool = ToolServer::http().await;
    // A socket and no token: the filesystem is the authentication; TCP is off.
    let tg = start_with_socket(&tool, "");
    let path = socket(&tg);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the socket is for toolgate's user only"
    );
    let body = revoke_body("task", "T-1", None);
    let answer = request(tg.admin, "POST", "/v1/revoke", &[], body.as_bytes());
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(problem_type(&answer), "operator-off");
    assert!(
        answer.json()["detail"]
            .as_str()
            .unwrap()
            .contains("listen.operator"),
        "{answer:?}"
    );
    assert_eq!(read_ticket(&tg, "T-1").await.0, 200);
    let answer = request_unix(&path, "POST", "/v1/revoke", &[], body.as_bytes());
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(read_ticket(&tg, "T-1").await.0, 403);
    drop(tg);

    // A socket and a token: the token is required on the socket too.
    let tg = start_with_socket(&tool, TOKEN_CONFIG);
    let path = socket(&tg);
    let answer = request_unix(&path, "POST", "/v1/revoke", &[], body.as_bytes());
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        metric(
            &tg,
            "toolgate_operator_auth_failures_total{listener=\"socket\"}"
        ),
        Some(1)
    );
    assert_eq!(read_ticket(&tg, "T-1").await.0, 200);
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    let answer = request_unix(
        &path,
        "POST",
        "/v1/revoke",
        &[("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(read_ticket(&tg, "T-1").await.0, 403);
    // The same token works on the admin listener.
    assert_eq!(operator(tg.admin, "GET", "/v1/tasks", None).status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_neither_token_nor_socket_the_operator_api_is_off_and_probes_stay_open() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, "");
    for (method, path) in [
        ("POST", "/v1/revoke"),
        ("GET", "/v1/revoke"),
        ("GET", "/v1/tasks"),
    ] {
        // Even with the token a configured toolgate would want: there is none here.
        let answer = operator(
            tg.admin,
            method,
            path,
            Some(&revoke_body("agent", "x", None)),
        );
        assert_eq!(answer.status, 403, "{path}: {answer:?}");
        assert_eq!(problem_type(&answer), "operator-off");
        let detail = answer.json()["detail"].as_str().unwrap().to_string();
        assert!(
            detail.contains("admin.token_file") && detail.contains("listen.operator"),
            "{detail}"
        );
    }
    assert_eq!(
        metric(
            &tg,
            "toolgate_operator_auth_failures_total{listener=\"admin\"}"
        ),
        None
    );
    for path in ["/healthz", "/readyz", "/metrics", "/.well-known/jwks.json"] {
        assert_eq!(http_get(tg.admin, path).unwrap().0, 200, "{path}");
    }
    assert_eq!(read_ticket(&tg, "T-1").await.0, 200);
    assert!(
        tg.logs().contains("operator API operator=off"),
        "{}",
        tg.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_socket_is_made_fresh_at_start_and_never_replaces_anything_else() {
    let tool = ToolServer::http().await;
    let listen = ", operator: \"unix:run/operator.sock\"";
    // No directory for it: refused, naming the fix.
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(dir.path(), listen, &config(&tool, ""));
    assert!(
        stderr.contains("listen.operator") && stderr.contains("does not exist"),
        "{stderr}"
    );

    // A shared temporary directory (world-writable, sticky, like /tmp): refused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    std::fs::set_permissions(
        dir.path().join("run"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    let stderr = refused_start(dir.path(), listen, &config(&tool, ""));
    assert!(stderr.contains("every local user can write"), "{stderr}");

    // Something that is not a socket at the path (an agent planting a file): refused, and the
    // file is left as it was.
    let dir = tempfile::tempdir().unwrap();
    support::write(dir.path(), "run/operator.sock", "not a socket");
    let stderr = refused_start(dir.path(), listen, &config(&tool, ""));
    assert!(stderr.contains("exists and is not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("run/operator.sock")).unwrap(),
        "not a socket"
    );

    // A live socket (someone already serving there): refused, the listener untouched.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let live =
        std::os::unix::net::UnixListener::bind(dir.path().join("run/operator.sock")).unwrap();
    let stderr = refused_start(dir.path(), listen, &config(&tool, ""));
    assert!(stderr.contains("another process is serving"), "{stderr}");
    drop(live);

    // Positive control: that socket, now stale (its listener gone, the file left behind as a
    // crashed run leaves it), is replaced, and serves.
    let stale_path = dir.path().join("run/operator.sock");
    assert!(stale_path.exists());
    let tg = Toolgate::start_with_listen(
        &format!("operator: \"unix:{}\"", stale_path.display()),
        &config(&tool, ""),
        &[("policy/main.rego", POLICY)],
        &[],
    );
    let answer = request_unix(
        &stale_path,
        "POST",
        "/v1/revoke",
        &[],
        revoke_body("task", "T-1", None).as_bytes(),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(read_ticket(&tg, "T-1").await.0, 403);
}
