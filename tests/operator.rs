//! The operator API against the agent it exists to stop: every test is written from the
//! attacker's side — a client on the same loopback as toolgate, as the agent in the pod is —
//! with the legitimate operator's request as the positive control. End to end through the
//! real binary, a real tool server and real clients (raw HTTP/1.1, reqwest, the `toolgate
//! revoke` command).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "operator/properties.rs"]
mod properties;
mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{
    binary, http_get, operator, operator_json, request, request_unix, ToolServer, Toolgate,
    OPERATOR_TOKEN, OPERATOR_TOKEN_FILE,
};

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read"
"#;

const TOKEN_CONFIG: &str = "admin: { token_file: operator-token }";

fn config(tool: &ToolServer, extra: &str) -> String {
    format!(
        r#"
agent: {{ id: spiffe://test/ns/a/sa/agent }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {}
    actions:
      - name: ticket.read
        match: {{ method: GET, path: "/rest/api/3/issue/{{issue}}" }}
policy: {{ files: [policy/*.rego] }}
limits: {{ shutdown_timeout: 1s }}
{extra}
"#,
        tool.url()
    )
}

/// toolgate with `extra` config and the operator token file in its directory.
fn start(tool: &ToolServer, extra: &str) -> Toolgate {
    Toolgate::start(
        &config(tool, extra),
        &[("policy/main.rego", POLICY), OPERATOR_TOKEN_FILE],
    )
}

/// toolgate with an operator socket at `run/operator.sock` in its directory (mode 0700).
fn start_with_socket(tool: &ToolServer, extra: &str) -> Toolgate {
    Toolgate::start_with_listen(
        "operator: \"unix:run/operator.sock\"",
        &config(tool, extra),
        &[
            ("policy/main.rego", POLICY),
            OPERATOR_TOKEN_FILE,
            ("run/.keep", ""),
        ],
        &[],
    )
}

fn socket(tg: &Toolgate) -> std::path::PathBuf {
    tg.dir.path().join("run/operator.sock")
}

/// The agent reads a ticket in `task` through the proxy; the status it gets.
async fn read_ticket(tg: &Toolgate, task: &str) -> (u16, Value) {
    let resp = tg
        .forward_client()
        .get("http://jira.test/rest/api/3/issue/SUP-1")
        .header("x-toolgate-task", task)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn problem_type(answer: &support::Answer) -> String {
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{answer:?}"
    );
    let body = answer.json();
    assert_eq!(body["status"], answer.status, "{body}");
    body["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("urn:toolgate:problem:")
        .to_string()
}

fn metric(tg: &Toolgate, line_start: &str) -> Option<u64> {
    let (_, text) = http_get(tg.admin, "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

fn revoke_body(kind: &str, id: &str, ttl: Option<&str>) -> String {
    let mut body = json!({ kind: id });
    if let Some(ttl) = ttl {
        body["ttl"] = json!(ttl);
    }
    body.to_string()
}

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

#[tokio::test(flavor = "multi_thread")]
async fn a_second_revoke_with_a_shorter_ttl_does_not_shorten_it() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, TOKEN_CONFIG);
    let first = operator(
        tg.admin,
        "POST",
        "/v1/revoke",
        Some(&revoke_body("task", "T-1", Some("1h"))),
    );
    assert_eq!(first.status, 200, "{first:?}");
    let expires = first.json()["revoked"]["expires"].clone();

    // The undo attempt: the same task, one second.
    let second = operator(
        tg.admin,
        "POST",
        "/v1/revoke",
        Some(&revoke_body("task", "T-1", Some("1s"))),
    );
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.json()["changed"], false);
    assert_eq!(second.json()["revoked"]["expires"], expires);
    assert_eq!(
        operator_json(tg.admin, "/v1/revoke")["revocations"][0]["expires"],
        expires
    );
    // Past the short ttl, the task is still revoked.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(read_ticket(&tg, "T-1").await.0, 403);
    assert_eq!(read_ticket(&tg, "T-2").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_revocation_bodies_get_a_400_and_revocations_keep_applying() {
    let tool = ToolServer::http().await;
    let tg = start(&tool, TOKEN_CONFIG);
    let huge_id = "x".repeat(600);
    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    let bodies: Vec<(Vec<u8>, u16)> = vec![
        (
            revoke_body("task", "T-1", Some("1000000000000y")).into_bytes(),
            400,
        ),
        (
            revoke_body("task", "T-1", Some("18446744073709551615s")).into_bytes(),
            400,
        ),
        (revoke_body("task", "T-1", Some("-1s")).into_bytes(), 400),
        (revoke_body("task", "T-1", Some("")).into_bytes(), 400),
        (revoke_body("task", "T-1", Some("0s")).into_bytes(), 400),
        (revoke_body("task", "T-1", Some("31d")).into_bytes(), 400),
        (br#"{"task": "T-1", "ttl": 3600}"#.to_vec(), 400),
        (revoke_body("task", &huge_id, None).into_bytes(), 400),
        (revoke_body("jti", "", None).into_bytes(), 400),
        (b"{\"task\": \"T-1\xff\xfe\"}".to_vec(), 400),
        (b"\xff\xfe\x00\x01".to_vec(), 400),
        (deep.clone().into_bytes(), 400),
        (br#"{"task": "T-1", "agent": "a"}"#.to_vec(), 400),
        (b"{\"task\": \"T\\u0000\"}".to_vec(), 400),
        (vec![b'{'; 5000], 413),
    ];
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    for (body, want) in &bodies {
        let answer = request(
            tg.admin,
            "POST",
            "/v1/revoke",
            &[("Authorization", &auth)],
            body,
        );
        assert_eq!(
            answer.status,
            *want,
            "{:?}: {answer:?}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        problem_type(&answer);
    }
    // Far past any ttl parse: the process is alive, nothing was revoked by the noise...
    assert_eq!(http_get(tg.admin, "/healthz").unwrap().0, 200);
    assert_eq!(
        operator_json(tg.admin, "/v1/revoke")["revocations"],
        json!([])
    );
    assert_eq!(read_ticket(&tg, "T-1").await.0, 200);
    // ...and a valid revocation still applies (the old panic path poisoned the set).
    let answer = operator(
        tg.admin,
        "POST",
        "/v1/revoke",
        Some(&revoke_body("task", "T-1", Some("30d"))),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(read_ticket(&tg, "T-1").await.0, 403);
    assert_eq!(read_ticket(&tg, "T-2").await.0, 200);
}

/// Start toolgate from a fresh directory with `listen` extras and `config`, expecting it to
/// refuse to start; its standard error.
fn refused_start(dir: &Path, listen: &str, config: &str) -> String {
    support::write(dir, "policy/main.rego", POLICY);
    support::write(dir, OPERATOR_TOKEN_FILE.0, OPERATOR_TOKEN_FILE.1);
    let yaml = format!(
        "listen: {{ proxy: \"127.0.0.1:{}\", admin: \"127.0.0.1:{}\"{listen} }}\n{config}",
        support::free_port(),
        support::free_port(),
    );
    support::write(dir, "toolgate.yaml", &yaml);
    let started = Instant::now();
    let out = Command::new(binary())
        .args(["run", "-c"])
        .arg(dir.join("toolgate.yaml"))
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

/// A state file holding `n` jti revocations that end in 2099.
fn full_state(n: usize) -> String {
    let entries: Vec<Value> = (0..n)
        .map(|i| json!({ "kind": "jti", "id": format!("jti-{i}"), "expires": "2099-01-01T00:00:00Z" }))
        .collect();
    json!({ "version": 1, "revocations": entries }).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_jti_room_refuses_new_jtis_and_still_takes_the_agents_revocation() {
    let tool = ToolServer::http().await;
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("state.json"), full_state(10_000)).unwrap();
    let extra = format!(
        "{TOKEN_CONFIG}\nstate: {{ dir: \"{}\" }}",
        state.path().display()
    );
    let tg = start(&tool, &extra);
    assert_eq!(
        operator_json(tg.admin, "/v1/revoke")["revocations"]
            .as_array()
            .unwrap()
            .len(),
        10_000
    );

    let answer = operator(
        tg.admin,
        "POST",
        "/v1/revoke",
        Some(&revoke_body("jti", "jti-new", None)),
    );
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(problem_type(&answer), "revocations-full");
    let detail = answer.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("10000 jti revocations"), "{detail}");
    assert_eq!(
        metric(&tg, "toolgate_revocations_refused_total{kind=\"jti\"}"),
        Some(1)
    );
    // Nothing was evicted for it, and one already held can still be lengthened.
    let answer = operator(
        tg.admin,
        "POST",
        "/v1/revoke",
        Some(&revoke_body("jti", "jti-7", None)),
    );
    assert_eq!(answer.status, 200, "{answer:?}");

    // The agent's revocation has a room of its own.
    assert_eq!(read_ticket(&tg, "T-1").await.0, 200);
    let agent = revoke_body("agent", "spiffe://test/ns/a/sa/agent", Some("1h"));
    let answer = operator(tg.admin, "POST", "/v1/revoke", Some(&agent));
    assert_eq!(answer.status, 200, "{answer:?}");
    let (status, problem) = read_ticket(&tg, "T-1").await;
    assert_eq!((status, problem["detail"].as_str()), (403, Some("revoked")));
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_survive_a_restart_and_a_corrupt_state_file_refuses_the_start() {
    let tool = ToolServer::http().await;
    let state = tempfile::tempdir().unwrap();
    let extra = format!(
        "{TOKEN_CONFIG}\nstate: {{ dir: \"{}\" }}",
        state.path().display()
    );
    let mut tg = start(&tool, &extra);
    let answer = operator(
        tg.admin,
        "POST",
        "/v1/revoke",
        Some(&revoke_body("task", "T-1", Some("1h"))),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(read_ticket(&tg, "T-1").await.0, 403);
    tg.terminate(Duration::from_secs(10)).unwrap();

    // The agent waits for a restart: the revocation is still there.
    let tg = start(&tool, &extra);
    assert_eq!(read_ticket(&tg, "T-1").await.0, 403);
    assert_eq!(read_ticket(&tg, "T-2").await.0, 200);
    drop(tg);

    // A state file that cannot be read refuses the start, naming the file and the fix.
    let file = state.path().join("state.json");
    std::fs::write(
        &file,
        "{\"version\": 1, \"revocations\": [{\"kind\": \"task\"",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(dir.path(), "", &config(&tool, &extra));
    let path = file.display().to_string();
    assert!(stderr.contains(&path), "{stderr}");
    assert!(
        stderr.contains("is not a toolgate state document"),
        "{stderr}"
    );
    assert!(stderr.contains("Move the file aside"), "{stderr}");
    let check = Command::new(binary())
        .args(["check", "-c"])
        .arg(dir.path().join("toolgate.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&path) && text.contains("Move the file aside"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_state_write_still_revokes_and_tells_the_operator() {
    let tool = ToolServer::http().await;
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let extra = format!("{TOKEN_CONFIG}\nstate: {{ dir: \"{}\" }}", dir.display());
    let tg = start(&tool, &extra);
    std::fs::remove_dir_all(&dir).unwrap();
    let answer = operator(
        tg.admin,
        "POST",
        "/v1/revoke",
        Some(&revoke_body("task", "T-1", Some("1h"))),
    );
    assert_eq!(answer.status, 500, "{answer:?}");
    assert_eq!(problem_type(&answer), "state-not-saved");
    let body = answer.json();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("will not survive a restart"),
        "{body}"
    );
    assert_eq!(body["revoked"]["id"], "T-1");
    assert_eq!(
        read_ticket(&tg, "T-1").await.0,
        403,
        "in force all the same"
    );
}

fn revoke_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(["revoke", "-c"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn toolgate_revoke_reaches_the_operator_api_by_socket_and_by_token() {
    let tool = ToolServer::http().await;
    // Through the socket (no token configured).
    let tg = start_with_socket(&tool, "");
    let config = tg.dir.path().join("toolgate.yaml");
    let (code, out, err) = revoke_cli(&config, &["--task", "T-1", "--ttl", "1h"]);
    assert_eq!(code, 0, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["revoked"]["kind"], "task");
    assert_eq!(read_ticket(&tg, "T-1").await.0, 403);
    let (code, out, _) = revoke_cli(&config, &["--list"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["revocations"][0]["id"], "T-1");
    // Refused by the API: exit 1, with the reason.
    let (code, out, err) = revoke_cli(&config, &["--jti", "j", "--ttl", "1000000000000y"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("400 invalid operator request"), "{err}");
    drop(tg);

    // Through the admin listener with the bearer token.
    let tg = start(&tool, TOKEN_CONFIG);
    let config = tg.dir.path().join("toolgate.yaml");
    let (code, out, err) = revoke_cli(&config, &["--agent", "spiffe://test/ns/a/sa/agent"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(read_ticket(&tg, "T-9").await.0, 403);
    drop(tg);

    // Usage and configuration errors: exit 2.
    let tg = start(&tool, "");
    let config = tg.dir.path().join("toolgate.yaml");
    let (code, _, err) = revoke_cli(&config, &["--task", "T-1"]);
    assert_eq!(code, 2);
    assert!(err.contains("the operator API is off"), "{err}");
    let (code, _, _) = revoke_cli(&config, &["--task", "T-1", "--agent", "a"]);
    assert_eq!(code, 2);
    let (code, _, _) = revoke_cli(&config, &[]);
    assert_eq!(code, 2);
    let (code, _, err) = revoke_cli(&tg.dir.path().join("missing.yaml"), &["--list"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(read_ticket(&tg, "T-1").await.0, 200);
}

fn check(dir: &Path, extra: &str, listen: &str) -> (i32, String) {
    let yaml = format!(
        "listen: {{ proxy: \"127.0.0.1:1\", admin: \"127.0.0.1:2\"{listen} }}\nagent: {{ id: a }}\npolicy: {{ files: [policy/*.rego] }}\n{extra}\n"
    );
    support::write(dir, "toolgate.yaml", &yaml);
    support::write(dir, "policy/main.rego", POLICY);
    let out = Command::new(binary())
        .args(["check", "-c"])
        .arg(dir.join("toolgate.yaml"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_refuses_guessable_tokens_and_sockets_other_users_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let token = |t: &str| support::write(dir.path(), "operator-token", t);
    let admin = "admin: { token_file: operator-token }";

    token("operator-token-1234567890");
    let (code, text) = check(dir.path(), admin, "");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("admin.token_file") && text.contains("fewer than 32"),
        "{text}"
    );
    assert!(
        !text.contains("operator-token-1234567890"),
        "the token is echoed: {text}"
    );
    token("");
    let (code, text) = check(dir.path(), admin, "");
    assert_eq!(code, 2);
    assert!(text.contains("is empty"), "{text}");
    token(&"ab".repeat(20));
    let (code, text) = check(dir.path(), admin, "");
    assert_eq!(code, 2);
    assert!(text.contains("trivially guessable"), "{text}");

    // A socket in a shared temporary directory (world-writable, sticky), or in none.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, text) = check(dir.path(), "", ", operator: \"unix:shared/op.sock\"");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("every local user can write"), "{text}");
    let (code, text) = check(dir.path(), "", ", operator: \"unix:missing/op.sock\"");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("does not exist"), "{text}");

    // Positive controls: a good token, a private socket directory.
    token(OPERATOR_TOKEN);
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, text) = check(dir.path(), admin, ", operator: \"unix:private/op.sock\"");
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("operator API is off"), "{text}");
    // Off is allowed, and said.
    let (code, text) = check(dir.path(), "", "");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("note: the operator API is off"), "{text}");
}
