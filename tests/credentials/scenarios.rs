//! The stories: minted JWTs, key rotation, token exchange, task tokens, agent identity,
//! secrets in other placements, and a grep of every surface for credential values.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{self, problem};
use crate::{verify_independently, Options, World, AGENT_ID, ORCHESTRATOR};

async fn pay(w: &World, task: &str) -> reqwest::Response {
    w.tg.forward_client()
        .post("http://payments.test/v1/payments?amount=5")
        .header("authorization", "Bearer agent-own-token")
        .header("x-toolgate-task", task)
        .body("{}")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_payment_carries_a_minted_jwt_that_verifies_against_the_admin_jwks() {
    let w = World::start(Options::default()).await;
    for _ in 0..3 {
        let resp = pay(&w, "T-42").await;
        assert_eq!(resp.status(), 200, "{}", w.tg.logs());
    }
    let seen = w.tool.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.headers.get_all("authorization").iter().count(), 1);
        assert!(!s.headers["authorization"]
            .to_str()
            .unwrap()
            .contains("agent-own-token"));
        assert!(!s.headers.contains_key("x-toolgate-task"));
    }
    let tokens: Vec<String> = seen.iter().map(|s| s.bearer()).collect();
    let jwks = w.admin_jwks();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    let verified = verify_independently(&jwks, "payments.test", &tokens);
    let mut jtis = Vec::new();
    for (header, claims) in &verified {
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
        assert_eq!(claims["iss"], "toolgate-test");
        assert_eq!(claims["sub"], AGENT_ID, "sub is the agent id from the SVID");
        assert_eq!(claims["aud"], "payments.test");
        let scope: Vec<&str> = claims["scope"].as_str().unwrap().split(' ').collect();
        assert_eq!(scope, ["payment.create", "payments:write"]);
        assert_eq!(claims["task"], "T-42");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(
            exp - iat,
            30,
            "exp - iat is the policy's ttl (max_ttl is 60s)"
        );
        assert_eq!(claims["nbf"], claims["iat"]);
        jtis.push(claims["jti"].as_str().unwrap().to_string());
    }
    jtis.sort();
    jtis.dedup();
    assert_eq!(jtis.len(), 3, "every token has its own jti");
    // The decision log names each token by its jti, never by its value.
    let lines = w.wait_for_decision(|l| l.len() >= 3);
    for jti in &jtis {
        assert!(
            lines
                .iter()
                .any(|l| l["credential"]["id"] == jti.as_str() && l["credential"]["kind"] == "jwt"),
            "jti {jti} not in the decision log: {lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_signed_before_and_after_key_rotation_both_verify() {
    let w = World::start(Options { max_ttl: "6s" }).await;
    assert_eq!(pay(&w, "T-1").await.status(), 200);
    let old_kid = w.admin_jwks()["keys"][0]["kid"].clone();

    // Rotation is replacing the key file: `keys init --force` writes beside it and renames.
    let key_file = w.tg.dir.path().join("keys/signing.pem");
    crate::keys_init(&["--out", key_file.to_str().unwrap(), "--force"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut jwks = w.admin_jwks();
    while jwks["keys"].as_array().unwrap().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        jwks = w.admin_jwks();
    }
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "the new key was not published: {jwks}"
    );
    assert_eq!(
        jwks["keys"][1]["kid"], old_kid,
        "the old key stays, after the new one"
    );

    assert_eq!(pay(&w, "T-1").await.status(), 200);
    let tokens: Vec<String> = w.tool.seen().iter().map(|s| s.bearer()).collect();
    let verified = verify_independently(&jwks, "payments.test", &tokens);
    assert_eq!(verified[0].0["kid"], old_kid);
    assert_eq!(
        verified[1].0["kid"], jwks["keys"][0]["kid"],
        "the new key signs after rotation"
    );
    let claims = &verified[1].1;
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        6,
        "the policy's 30s is capped at max_ttl"
    );

    // After max_ttl the old key leaves the JWKS: no token it signed is still valid.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.admin_jwks()["keys"].as_array().unwrap().len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = w.admin_jwks();
    assert_eq!(after["keys"].as_array().unwrap().len(), 1, "{after}");
    assert_eq!(after["keys"][0]["kid"], jwks["keys"][0]["kid"]);
}

async fn repo(w: &World, path: &str) -> reqwest::Response {
    w.tg.forward_client()
        .get(format!("http://github.test{path}"))
        .header("authorization", "Bearer agent-own-token")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_is_rfc8693_and_cached_until_shortly_before_expiry() {
    let w = World::start(Options::default()).await;
    for _ in 0..4 {
        assert_eq!(
            repo(&w, "/repos/toolgate").await.status(),
            200,
            "{}",
            w.tg.logs()
        );
    }
    let exchanges = w.sts.server.seen();
    assert_eq!(
        exchanges.len(),
        1,
        "one exchange for four requests: {exchanges:#?}"
    );
    let ex = &exchanges[0];
    assert_eq!(ex.method, "POST");
    assert_eq!(ex.target, "/token");
    assert_eq!(
        ex.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("toolgate:{}", crate::STS_CLIENT_SECRET));
    assert_eq!(ex.headers["authorization"], format!("Basic {basic}"));
    let form = ex.form();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(
        form["subject_token"], w.svid,
        "the subject token is the agent's identity token"
    );
    assert_eq!(
        form["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(form["audience"], "github");
    assert_eq!(
        form["scope"], "read repo:read",
        "the credential's scopes, then the decision's"
    );
    let seen = w.tool.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen
        .iter()
        .all(|s| s.headers["authorization"] == "Bearer exchanged-1-github"));

    // Another scope is another cache entry; this STS gives it a 2 s lifetime, so a request
    // after its refresh point (a tenth of the lifetime, at least 1 s, before expiry) exchanges again.
    assert_eq!(repo(&w, "/repos/toolgate/status").await.status(), 200);
    assert_eq!(w.sts.server.seen().len(), 2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(repo(&w, "/repos/toolgate/status").await.status(), 200);
    assert_eq!(
        w.sts.server.seen().len(),
        3,
        "a token near its expiry is not reused"
    );
    assert_eq!(repo(&w, "/repos/toolgate").await.status(), 200);
    assert_eq!(
        w.sts.server.seen().len(),
        3,
        "the long-lived token is still cached"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sts_failure_is_a_503_and_nothing_reaches_the_tool() {
    let w = World::start(Options::default()).await;
    w.sts.fail_with(500);
    let (status, body) = problem(repo(&w, "/repos/toolgate").await).await;
    assert_eq!(status, 503);
    assert_eq!(body["type"], "urn:toolgate:problem:credential-unavailable");
    assert_eq!(body["action"], "repo.read");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("credential \"github\" is unavailable"),
        "{detail}"
    );
    assert!(detail.contains("answered 500 (server_error)"), "{detail}");

    w.sts.server.stop();
    let (status, body) = problem(repo(&w, "/repos/toolgate").await).await;
    assert_eq!(status, 503);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{body}"
    );
    assert!(
        w.tool.seen().is_empty(),
        "a request was forwarded without its credential"
    );
    let lines = w.wait_for_decision(|l| l.len() >= 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["result"]["effect"] == "error"),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| l["credential"].is_null()), "{lines:?}");
}

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

#[tokio::test(flavor = "multi_thread")]
async fn secrets_go_in_a_query_parameter_or_as_http_basic() {
    let w = World::start(Options::default()).await;
    let client = w.tg.forward_client();
    let resp = client
        .get("http://maps.test/tiles?z=3&key=agent-own-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", w.tg.logs());
    assert_eq!(
        resp.headers()["x-echo-target"],
        "/tiles?z=3&key=[redacted]",
        "the tool's echo of the secret is scrubbed"
    );
    let resp = client
        .get("http://legacy.test/status")
        .header("authorization", "Basic YWdlbnQ6b3du")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-authorization"], "Basic [redacted]");
    let seen = w.tool.seen();
    assert_eq!(
        seen[0].target, "/tiles?z=3&key=maps%2Fsecret%2B9e",
        "the agent's own key is replaced"
    );
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("svc:{}", crate::LEGACY_SECRET));
    assert_eq!(seen[1].headers["authorization"], format!("Basic {basic}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_or_token_value_reaches_logs_metrics_or_responses() {
    let w = World::start(Options::default()).await;
    let client = w.tg.forward_client();
    let task_token = w.task_token("T-5", json!({ "role": "analyst", "on_behalf_of": "bob" }));
    let mut surfaces = support_surfaces::Surfaces::default();
    let requests = [
        client
            .post("http://payments.test/v1/payments")
            .header("x-toolgate-task-token", &task_token),
        client
            .get("http://github.test/repos/toolgate")
            .header("x-toolgate-task-token", &task_token),
        client
            .get("http://jira.test/issue/A")
            .header("x-api-token", "agent-own"),
        client.get("http://maps.test/tiles?key=agent-own"),
        client.get("http://legacy.test/status"),
        client
            .get("http://reports.test/reports/1")
            .header("x-toolgate-task-token", &task_token),
        client
            .get("http://reports.test/reports/1")
            .header("x-toolgate-task-token", "garbage"),
        client.delete("http://jira.test/issue/A"),
    ];
    for rb in requests {
        surfaces.response(rb.send().await.unwrap()).await;
    }
    w.sts.fail_with(503);
    surfaces
        .response(
            client
                .get("http://github.test/repos/other/status")
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert!(w.wait_for_log("action=repo.status"), "{}", w.tg.logs());

    // What each credential was on the wire, as the tool received it.
    let seen = w.tool.seen();
    assert_eq!(seen.len(), 6, "{seen:#?}");
    let header = |i: usize, name: &str| seen[i].headers[name].to_str().unwrap().to_string();
    let minted = seen[0].bearer();
    let exchanged = seen[1].bearer();
    assert!(header(0, "authorization").len() > 100 && exchanged.starts_with("exchanged-"));
    assert_eq!(header(2, "x-api-token"), crate::JIRA_SECRET);
    let key_body: String = w
        .signing_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let values = [
        ("minted JWT", minted.as_str()),
        ("exchanged token", exchanged.as_str()),
        ("jira secret", crate::JIRA_SECRET),
        ("maps secret", crate::MAPS_SECRET),
        ("maps secret, encoded", "maps%2Fsecret%2B9e"),
        ("legacy password", crate::LEGACY_SECRET),
        ("STS client secret", crate::STS_CLIENT_SECRET),
        ("agent identity token", w.svid.as_str()),
        ("task token", task_token.as_str()),
        ("signing key", key_body.as_str()),
    ];
    // The tool did echo credentials: only scrubbing keeps them from the agent.
    assert!(surfaces
        .all()
        .iter()
        .any(|(_, text)| text.contains("[redacted]")));
    // Refusals at identify (the garbage task token) come before a decision: 8 lines.
    let lines = w.wait_for_decision(|l| l.len() >= 8);
    assert_eq!(lines.len(), 8, "{lines:?}");
    surfaces.admin(
        &w.tg,
        &[
            "/metrics",
            "/.well-known/jwks.json",
            "/v1/tasks",
            "/v1/tasks/T-5",
            "/v1/revoke",
        ],
    );
    surfaces.logs(&w.tg);
    for (label, text) in surfaces.all() {
        for (name, value) in values {
            assert!(
                !text.contains(value),
                "the {name} appears in {label}:\n{text}"
            );
        }
    }
}

/// Every text surface an operator or the agent can see, gathered for one grep.
mod support_surfaces {
    use crate::support;

    #[derive(Default)]
    pub struct Surfaces {
        texts: Vec<(String, String)>,
    }

    impl Surfaces {
        /// A response to the agent: status, headers and body.
        pub async fn response(&mut self, resp: reqwest::Response) {
            let mut text = format!("{}\n", resp.status());
            for (k, v) in resp.headers() {
                text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            text.push_str(&resp.text().await.unwrap());
            self.texts
                .push((format!("response #{}", self.texts.len()), text));
        }

        /// Admin endpoints.
        pub fn admin(&mut self, tg: &support::Toolgate, paths: &[&str]) {
            for p in paths {
                let (_, body) = support::http_get(tg.admin, p).unwrap();
                self.texts.push((format!("admin {p}"), body));
            }
        }

        /// toolgate's log (stderr) and its decision log (stdout). Span attributes join here
        /// once spans are exported (an OTLP receiver's decoded spans as one more surface).
        pub fn logs(&mut self, tg: &support::Toolgate) {
            self.texts.push(("the log".into(), tg.logs()));
            let decisions = std::fs::read_to_string(tg.dir.path().join("stdout.log")).unwrap();
            self.texts.push(("the decision log".into(), decisions));
        }

        pub fn all(&self) -> &[(String, String)] {
            &self.texts
        }
    }
}

#[test]
fn keys_init_writes_an_owner_only_key_and_keeps_an_existing_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("signing.pem");
    let path = out.to_str().unwrap();
    crate::keys_init(&["--out", path]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o600);
    let first = std::fs::read_to_string(&out).unwrap();
    let key = toolgate_policy::config::SigningKey::from_pem(
        first.as_bytes(),
        jsonwebtoken::Algorithm::EdDSA,
    )
    .unwrap();
    assert_eq!(key.jwk()["crv"], "Ed25519");

    let again = std::process::Command::new(support::binary())
        .args(["keys", "init", "--out", path])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists; pass --force to replace it"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), first);

    crate::keys_init(&["--out", path, "--force"]);
    assert_ne!(std::fs::read_to_string(&out).unwrap(), first);
    assert_eq!(mode(&out), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
}
