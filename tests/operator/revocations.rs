//! Revocations the agent cannot undo, crowd out or outlast: only ever lengthened, hostile
//! bodies refused without harm, a full room that never evicts, a restart, a failed write.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::{
    binary, http_get, operator, operator_json, request, ToolServer, OPERATOR_TOKEN,
};
use crate::{
    config, full_state, metric, problem_type, read_ticket, refused_start, revoke_body, start,
    TOKEN_CONFIG,
};

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
