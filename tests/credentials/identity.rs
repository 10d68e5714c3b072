//! Identity: task tokens verified against their issuer (claims in `input.task.claims`, the
//! task named by the token) and the agent's id from its JWT-SVID file, re-read on rotation.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::problem;
use crate::{verify_independently, Options, World, AGENT_ID, ORCHESTRATOR};

async fn report(w: &World, token: Option<&str>, task_header: Option<&str>) -> reqwest::Response {
    let mut rb = w.tg.forward_client().get("http://reports.test/reports/7");
    if let Some(t) = token {
        rb = rb.header("x-toolgate-task-token", t);
    }
    if let Some(t) = task_header {
        rb = rb.header("x-toolgate-task", t);
    }
    rb.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn task_token_claims_reach_policy_and_name_the_task() {
    let w = World::start(Options::default()).await;
    let analyst = w.task_token(
        "T-9",
        json!({ "role": "analyst", "on_behalf_of": "alice", "act": { "sub": "user:alice" } }),
    );
    let resp = report(&w, Some(&analyst), None).await;
    assert_eq!(resp.status(), 200, "{}", w.tg.logs());
    let got = &w.tool.seen()[0];
    assert!(
        !got.headers.contains_key("x-toolgate-task-token"),
        "the task token was forwarded"
    );

    let viewer = w.task_token("T-9", json!({ "role": "viewer" }));
    let (status, body) = problem(report(&w, Some(&viewer), None).await).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("only analysts may read reports"))
    );

    // The same token's task and delegation chain end up in a minted credential.
    let resp =
        w.tg.forward_client()
            .post("http://payments.test/v1/payments")
            .header("x-toolgate-task-token", &analyst)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let minted = w.tool.seen().last().unwrap().bearer();
    let claims = &verify_independently(&w.admin_jwks(), "payments.test", &[minted])[0].1;
    assert_eq!(claims["task"], "T-9");
    assert_eq!(claims["act"], json!({ "sub": "user:alice" }));

    let lines = w.wait_for_decision(|l| l.len() >= 3);
    assert_eq!(
        lines[0]["task"], "T-9",
        "the token's task claim sets the task"
    );
    assert_eq!(lines[0]["result"]["reason"], "analyst working for alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_task_tokens_are_refused_with_a_reason() {
    let w = World::start(Options::default()).await;
    let impostor = crate::issuer_key();
    let mut forged_header = impostor.header().clone();
    forged_header.kid = Some(w.orchestrator.kid().to_string());
    let claims =
        json!({ "iss": ORCHESTRATOR, "aud": "toolgate", "task": "T-1", "exp": crate::now() + 600 });
    let forged = jsonwebtoken::encode(&forged_header, &claims, impostor.encoding_key()).unwrap();
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "expired",
            w.task_token(
                "T-1",
                json!({ "exp": crate::now() - 3600, "iat": crate::now() - 7200 }),
            ),
            None,
            "the task token expired at ",
        ),
        (
            "wrong issuer",
            crate::sign(
                &w.orchestrator,
                json!({ "iss": "https://evil.test", "aud": "toolgate", "task": "T-1", "exp": crate::now() + 600 }),
            ),
            None,
            "the task token is from issuer \"https://evil.test\", which is not trusted",
        ),
        (
            "bad signature",
            forged,
            None,
            "the task token has a signature that does not verify",
        ),
        (
            "wrong audience",
            w.task_token("T-1", json!({ "aud": "someone-else" })),
            None,
            "the task token is not meant for this audience",
        ),
        (
            "not a JWT",
            "not-a-jwt".to_string(),
            None,
            "the task token is not a well-formed JWT",
        ),
        (
            "disagrees with x-toolgate-task",
            w.task_token("T-1", json!({ "role": "analyst", "on_behalf_of": "a" })),
            Some("T-2"),
            "x-toolgate-task names task \"T-2\", but the task token is for task \"T-1\"",
        ),
        (
            "no task claim",
            crate::sign(
                &w.orchestrator,
                json!({ "iss": ORCHESTRATOR, "aud": "toolgate", "exp": crate::now() + 600 }),
            ),
            None,
            "the task token has no \"task\" claim",
        ),
    ];
    for (case, token, header, want) in cases {
        let (status, body) = problem(report(&w, Some(&token), header).await).await;
        assert_eq!(status, 403, "{case}: {body}");
        assert_eq!(body["type"], "urn:toolgate:problem:task-token", "{case}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(want),
            "{case}: {detail:?} should start with {want:?}"
        );
        assert!(
            !detail.contains(&token) || token.len() < 12,
            "{case}: the token is echoed"
        );
    }
    assert!(
        w.tool.seen().is_empty(),
        "a request with an invalid task token reached the tool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_id_comes_from_the_svid_file_and_follows_its_rotation() {
    let w = World::start(Options::default()).await;
    let ok =
        w.tg.forward_client()
            .get("http://jira.test/issue/A")
            .send()
            .await
            .unwrap();
    assert_eq!(ok.status(), 200);
    let lines = w.wait_for_decision(|l| !l.is_empty());
    assert_eq!(lines[0]["agent"], AGENT_ID, "{lines:?}");

    // A rotated SVID (new subject) is picked up by hot reload.
    let rotated = "spiffe://test.example/ns/agents/sa/triage-v2";
    w.replace_file("identity/svid.jwt", &crate::svid(&w.spire, rotated));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp =
            w.tg.forward_client()
                .get("http://jira.test/issue/B")
                .send()
                .await
                .unwrap();
        assert_eq!(resp.status(), 200);
        let lines = w.decisions();
        if lines.iter().any(|l| l["agent"] == rotated) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated SVID was not picked up: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // An SVID signed by someone else is rejected; the last good identity keeps serving.
    w.replace_file(
        "identity/svid.jwt",
        &crate::svid(&crate::issuer_key(), "spiffe://evil/agent"),
    );
    assert!(
        w.wait_for_log("new configuration rejected"),
        "{}",
        w.tg.logs()
    );
    assert!(
        w.tg.logs()
            .contains("agent.id_file: the identity token is signed with key"),
        "{}",
        w.tg.logs()
    );
    let resp =
        w.tg.forward_client()
            .get("http://jira.test/issue/C")
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let lines = w.wait_for_decision(|l| l.iter().any(|l| l["attributes"]["issue"] == "C"));
    let c = lines
        .iter()
        .find(|l| l["attributes"]["issue"] == "C")
        .unwrap();
    assert_eq!(c["agent"], rotated);
}
