//! The story: the orchestrator starts a task on agent A; A hands part of it to B; B acts
//! within it (its JWTs name A), is refused outside it before policy, and cannot hand it on
//! again (policy limits the depth); the task ends: B is refused, B's JWTs are dead to
//! introspection and listed in the feed, and B's exchanged token is revoked at the STS.

use std::time::Duration;

use serde_json::json;

use crate::support::{self, problem};
use crate::{
    bearer, claims_of, issuer_of, task_token, verify_independently, Agent, Pair, Setup, AGENT_A,
    AGENT_B, AGENT_C, USER,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_task_handed_from_a_to_b_is_narrowed_traced_and_dies_with_its_end() {
    let p = Pair::start("").await;
    let root = task_token(&p.orchestrator, "T-42", AGENT_A, 600);
    let root_exp = claims_of(&root)["exp"].as_u64().unwrap();

    // A acts in its own task, and may close tickets: the positive control for B's refusal.
    assert_eq!(p.a.read_ticket(&root, "SUP-1").await.status(), 200);
    assert_eq!(p.a.close_ticket(&root, "SUP-1").await.status(), 200);

    // A hands reading tickets and repositories on to B; closing is not among them, and a
    // scope A does not hold... A's orchestrator token restricts nothing, so all are granted.
    let resp = p
        .a
        .delegate(
            &root,
            json!({ "to": AGENT_B, "actions": ["ticket.read", "repo.read"], "scopes": ["tickets:read"], "ttl": "10m" }),
        )
        .await;
    assert_eq!(resp.status(), 200, "{}", p.a.tg.logs());
    assert_eq!(resp.headers()["content-type"], "application/json");
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["task"], "T-42");
    assert_eq!(answer["actions"], json!(["ticket.read", "repo.read"]));
    assert_eq!(answer["depth"], 1);
    let delegation = answer["token"].as_str().unwrap().to_string();

    // The delegation token, verified by PyJWT against A's JWKS, for B.
    let verified = verify_independently(&p.a.jwks(), AGENT_B, std::slice::from_ref(&delegation));
    let (header, claims) = &verified[0];
    assert_eq!(header["alg"], "EdDSA");
    assert!(p.a.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == header["kid"]));
    assert_eq!(claims["iss"], issuer_of(AGENT_A));
    assert_eq!(claims["sub"], AGENT_B);
    assert_eq!(claims["task"], "T-42");
    assert_eq!(claims["actions"], json!(["ticket.read", "repo.read"]));
    assert_eq!(claims["scope"], "tickets:read");
    assert_eq!(claims["depth"], 1);
    assert_eq!(
        claims["act"],
        json!({ "sub": AGENT_A, "act": { "sub": USER } })
    );
    assert_eq!(claims["jti"], answer["jti"]);
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp <= root_exp, "a delegation outlives its task's token");
    assert!(exp <= claims["iat"].as_u64().unwrap() + 600);
    assert!(
        claims["traceparent"]
            .as_str()
            .unwrap()
            .starts_with(&format!("00-{}-", answer["trace_id"].as_str().unwrap())),
        "{claims}"
    );

    // B reads under the delegation: its JWT names A (and the user) as actors.
    let before = p.tool.received().len();
    let resp = p.b.read_ticket(&delegation, "SUP-1").await;
    assert_eq!(resp.status(), 200, "{}", p.b.tg.logs());
    let received = p.tool.received();
    let jwt = bearer(received.last().unwrap());
    let b_jwks = p.b.jwks();
    let verified = verify_independently(&b_jwks, "jira.test", std::slice::from_ref(&jwt));
    let claims = &verified[0].1;
    assert_eq!(claims["sub"], AGENT_B);
    assert_eq!(claims["task"], "T-42");
    assert_eq!(
        claims["act"],
        json!({ "sub": AGENT_A, "act": { "sub": USER } })
    );
    assert_eq!(
        claims["scope"], "ticket.read tickets:read",
        "the policy asked for tickets:admin too; the delegation carries only tickets:read"
    );
    assert!(claims["exp"].as_u64().unwrap() <= exp);
    assert_eq!(received.len(), before + 1);

    // Policy saw the delegation; the decision log and the span carry it.
    let line = p.b.decision(|l| l["action"] == "ticket.read");
    assert_eq!(
        line["result"]["reason"],
        format!("reading tickets, handed on by {AGENT_A} at depth 1")
    );
    assert_eq!(
        line["delegation"],
        json!({ "depth": 1, "agents": [AGENT_A, AGENT_B] })
    );
    assert_eq!(line["task"], "T-42");

    // Closing is outside the delegation: refused before policy (which would allow it), and
    // the tool never sees it.
    let (status, body) = problem(p.b.close_ticket(&delegation, "SUP-1").await).await;
    assert_eq!(status, 403);
    assert_eq!(body["type"], "urn:toolgate:problem:delegation-scope");
    assert_eq!(body["action"], "ticket.transition");
    assert_eq!(
        body["delegated_actions"],
        json!(["ticket.read", "repo.read"])
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("ticket.transition"),
        "{body}"
    );
    assert_eq!(p.tool.received().len(), before + 1);

    // B's exchanged token, for the STS revocation to come.
    assert_eq!(p.b.read_repo(&delegation, "toolgate").await.status(), 200);
    let exchanged = bearer(p.tool.received().last().unwrap());

    // B cannot hand the task on again: policy limits delegation to one hop.
    let (status, body) = problem(
        p.b.delegate(
            &delegation,
            json!({ "to": AGENT_C, "actions": ["ticket.read"] }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["type"], "urn:toolgate:problem:denied");
    assert_eq!(body["action"], "task.delegate");
    assert_eq!(body["detail"], "a task is handed on at most 1 times");
    let line = p.b.decision(|l| l["action"] == "task.delegate");
    assert_eq!(line["attributes"]["depth"], 2);
    assert_eq!(line["attributes"]["to"], AGENT_C);

    // Introspection: B's JWT is active now; so is one of B's own tasks (the later control).
    assert_eq!(p.b.introspect(&jwt)["active"], true);
    let own =
        p.b.tg
            .forward_client()
            .get("http://jira.test/issue/SUP-2")
            .header("x-toolgate-task", "B-own")
            .send()
            .await
            .unwrap();
    assert_eq!(own.status(), 200);
    let live = bearer(p.tool.received().last().unwrap());
    let seen = p.b.introspect(&live);
    assert_eq!(seen["active"], true);
    assert_eq!(seen["task"], "B-own");
    assert_eq!(seen["sub"], AGENT_B);

    // The orchestrator ends the task on B, with the CLI.
    let out = std::process::Command::new(support::binary())
        .args(["tasks", "-c"])
        .arg(p.b.tg.dir.path().join("toolgate.yaml"))
        .args(["end", "T-42", "--by", "orchestrator", "--reason", "done"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ended["ended"]["id"], "T-42");
    assert_eq!(ended["ended"]["by"], "orchestrator");
    assert_eq!(ended["changed"], true);
    let jti = claims["jti"].as_str().unwrap();
    assert!(
        ended["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["jti"] == jti && c["kind"] == "jwt"),
        "{ended}"
    );
    assert_eq!(
        ended["exchanged"],
        json!([{ "credential": "github", "endpoint": format!("{}/revoke", p.sts.server.url()), "result": "revoked" }])
    );

    // The STS received the RFC 7009 revocation of B's exchanged token.
    let revocations: Vec<_> = p
        .sts
        .server
        .seen()
        .into_iter()
        .filter(|s| s.target == "/revoke")
        .collect();
    assert_eq!(revocations.len(), 1, "{revocations:#?}");
    let form = revocations[0].form();
    assert_eq!(form["token"], exchanged);
    assert_eq!(form["token_type_hint"], "access_token");
    assert!(revocations[0].headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));

    // B's next request under the task is refused before policy.
    let before = p.tool.received().len();
    let (status, body) = problem(p.b.read_ticket(&delegation, "SUP-1").await).await;
    assert_eq!(status, 403);
    assert_eq!(body["type"], "urn:toolgate:problem:task-ended");
    assert_eq!(body["ended_by"], "orchestrator");
    assert_eq!(p.tool.received().len(), before);
    let line =
        p.b.decision(|l| l["result"]["effect"] == "deny" && l["action"] == "ticket.read");
    assert_eq!(line["task_ended"]["by"], "orchestrator");

    // The JWT issued under it is dead; the one of B's own task lives (the control).
    assert_eq!(p.b.introspect(&jwt), json!({ "active": false }));
    assert_eq!(p.b.introspect(&live)["active"], true);
    // The revocation feed lists the task and the JWT.
    let feed = support::operator_json(p.b.tg.admin, "/v1/revocations/feed");
    assert_eq!(feed["ended_tasks"][0]["id"], "T-42");
    assert!(
        feed["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["jti"] == jti && c["task"] == "T-42"),
        "{feed}"
    );
    // Its chain is kept, with its end.
    let task = support::operator_json(p.b.tg.admin, "/v1/tasks/T-42");
    assert_eq!(task["ended"]["by"], "orchestrator");
    assert_eq!(task["ended"]["reason"], "done");
    assert!(
        task["chain"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "ticket.read" && e["agent"] == AGENT_B),
        "{task}"
    );

    // A still serves the task until it is ended there too (memory state is per process).
    assert_eq!(p.a.read_ticket(&root, "SUP-1").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_admits_only_its_clients_and_the_operator() {
    let p = Pair::start("").await;
    let root = task_token(&p.orchestrator, "T-7", AGENT_A, 600);
    assert_eq!(p.a.read_ticket(&root, "SUP-7").await.status(), 200);
    let jwt = bearer(&p.tool.received()[0]);
    // The client, and the operator: active.
    assert_eq!(p.a.introspect(&jwt)["active"], true);
    let body = format!("token={jwt}");
    let by_operator = support::request(
        p.a.tg.admin,
        "POST",
        "/v1/introspect",
        &[
            (
                "Authorization",
                &format!("Bearer {}", support::OPERATOR_TOKEN),
            ),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    );
    assert_eq!(by_operator.status, 200, "{}", by_operator.body);
    assert_eq!(by_operator.json()["active"], true);
    // Nobody else.
    for client in [
        None,
        Some(("jira-tool", "wrong-secret")),
        Some(("other", crate::INTROSPECTION_SECRET)),
    ] {
        let answer = p.a.introspect_as(client, &jwt);
        assert_eq!(answer.status, 401, "{client:?}: {}", answer.body);
        assert!(!answer.body.contains("active"), "{}", answer.body);
    }
    // Not a token of this toolgate, or not a token at all: inactive.
    let (_, stranger) = crate::new_key();
    let foreign = crate::sign(&stranger, &claims_of(&jwt));
    assert_eq!(p.a.introspect(&foreign), json!({ "active": false }));
    assert_eq!(p.a.introspect("not-a-jwt"), json!({ "active": false }));
    // B does not vouch for A's tokens.
    assert_eq!(p.b.introspect(&jwt), json!({ "active": false }));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_survives_a_restart_and_revoking_the_agent_kills_its_tokens() {
    let state = tempfile::tempdir().unwrap();
    let extra = format!("state: {{ dir: \"{}\" }}", state.path().display());
    let mut p = Pair::start(&extra).await;
    let delegate = |task: &'static str| {
        let root = task_token(&p.orchestrator, task, AGENT_A, 600);
        let a = &p.a;
        async move {
            let answer: serde_json::Value = a
                .delegate(
                    &root,
                    json!({ "to": AGENT_B, "actions": ["ticket.read", "repo.read"] }),
                )
                .await
                .json()
                .await
                .unwrap();
            answer["token"].as_str().unwrap().to_string()
        }
    };
    let t9 = delegate("T-9").await;
    let t10 = delegate("T-10").await;
    assert_eq!(p.b.read_ticket(&t9, "SUP-9").await.status(), 200);
    let ended = support::operator(p.b.tg.admin, "POST", "/v1/tasks/T-9/end", None);
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.json()["ended"]["by"], "operator");
    // Ending it again changes nothing: the first end stands.
    let again = support::operator(
        p.b.tg.admin,
        "POST",
        "/v1/tasks/T-9/end",
        Some(r#"{"by": "someone-else"}"#),
    );
    assert_eq!(again.json()["changed"], false);
    assert_eq!(again.json()["ended"]["by"], "operator");

    // B restarts on the same state: T-9 stays ended; T-10 (the control) is served.
    p.b.tg.terminate(Duration::from_secs(10)).unwrap();
    p.b = Agent::start(Setup {
        id: AGENT_B,
        tool: &p.tool,
        sts: &p.sts,
        orchestrator: &p.orchestrator,
        trusts: vec![p.a.trust()],
        max_depth: 1,
        extra: &extra,
        otlp: None,
    });
    let (status, body) = problem(p.b.read_ticket(&t9, "SUP-9").await).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (403, Some("urn:toolgate:problem:task-ended"))
    );
    assert_eq!(p.b.read_ticket(&t10, "SUP-10").await.status(), 200);
    let jwt = bearer(p.tool.received().last().unwrap());
    assert_eq!(p.b.read_repo(&t10, "toolgate").await.status(), 200);
    let exchanged = bearer(p.tool.received().last().unwrap());
    assert_eq!(p.b.introspect(&jwt)["active"], true);

    // Revoking B's agent kills its JWTs and revokes its exchanged tokens at the STS.
    let answer = support::operator(
        p.b.tg.admin,
        "POST",
        "/v1/revoke",
        Some(&format!(r#"{{"agent": "{AGENT_B}", "ttl": "1h"}}"#)),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["exchanged"][0]["result"], "revoked");
    let revoked: Vec<String> = p
        .sts
        .server
        .seen()
        .into_iter()
        .filter(|s| s.target == "/revoke")
        .map(|s| s.form()["token"].clone())
        .collect();
    assert_eq!(revoked, [exchanged]);
    assert_eq!(p.b.introspect(&jwt), json!({ "active": false }));
    let feed = support::operator_json(p.b.tg.admin, "/v1/revocations/feed");
    assert!(
        feed["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["agent"] == AGENT_B && c["task"] == "T-10"),
        "{feed}"
    );
    assert_eq!(feed["ended_tasks"][0]["id"], "T-9");
    // A's own tokens are A's business: still alive there.
    let root = task_token(&p.orchestrator, "T-11", AGENT_A, 600);
    assert_eq!(p.a.read_ticket(&root, "SUP-11").await.status(), 200);
    let a_jwt = bearer(p.tool.received().last().unwrap());
    assert_eq!(p.a.introspect(&a_jwt)["active"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tasks_credentials_die_with_its_token() {
    let p = Pair::start("").await;
    let short = task_token(&p.orchestrator, "T-short", AGENT_A, 3);
    let exp = claims_of(&short)["exp"].as_u64().unwrap();
    let long = task_token(&p.orchestrator, "T-long", AGENT_A, 600);
    // A minted JWT never outlives its task's token (the credential's max_ttl is 60s).
    assert_eq!(p.a.read_ticket(&short, "SUP-1").await.status(), 200);
    let jwt = crate::claims_of(&bearer(p.tool.received().last().unwrap()));
    assert!(jwt["exp"].as_u64().unwrap() <= exp, "{jwt}");
    // Tokens exchanged for both tasks; only the expired task's is revoked at the STS.
    assert_eq!(p.a.read_repo(&short, "toolgate").await.status(), 200);
    let short_token = bearer(p.tool.received().last().unwrap());
    assert_eq!(p.a.read_repo(&long, "toolgate").await.status(), 200);
    let long_token = bearer(p.tool.received().last().unwrap());
    assert_ne!(short_token, long_token, "exchanged tokens are per task");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let revoked = loop {
        let revoked: Vec<String> = p
            .sts
            .server
            .seen()
            .into_iter()
            .filter(|s| s.target == "/revoke")
            .map(|s| s.form()["token"].clone())
            .collect();
        if !revoked.is_empty() || std::time::Instant::now() > deadline {
            break revoked;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(revoked, [short_token]);
    // The other task goes on with its token.
    assert_eq!(p.a.read_repo(&long, "toolgate").await.status(), 200);
    assert_eq!(bearer(p.tool.received().last().unwrap()), long_token);
}
