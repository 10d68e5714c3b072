//! `kind: token_exchange` against a local RFC 8693 STS: the request's shape, the cache, and
//! failing closed when the STS fails.

use std::time::Duration;

use crate::support::problem;
use crate::{Options, World};

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

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_identity_is_exchanged_anew_and_never_gets_the_old_identitys_token() {
    let w = World::start(Options::default()).await;
    // Positive control: one identity, one exchange, the token cached.
    for _ in 0..2 {
        assert_eq!(repo(&w, "/repos/toolgate").await.status(), 200);
    }
    assert_eq!(w.sts.server.seen().len(), 1);
    assert_eq!(w.tool.seen()[1].bearer(), "exchanged-1-github");

    let rotated = "spiffe://test.example/ns/agents/sa/triage-v2";
    let new_svid = crate::svid(&w.spire, rotated);
    w.replace_file("identity/svid.jwt", &new_svid);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(repo(&w, "/repos/toolgate").await.status(), 200);
        if w.decisions().iter().any(|l| l["agent"] == rotated) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated SVID was not picked up: {}",
            w.tg.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The request decided for the new identity exchanged the new identity's token.
    let exchanges = w.sts.server.seen();
    assert_eq!(exchanges.len(), 2, "{exchanges:#?}");
    assert_eq!(exchanges[1].form()["subject_token"], new_svid);
    let last = w.tool.seen().pop().unwrap();
    assert_eq!(last.bearer(), "exchanged-2-github");
    // And it stays cached for that identity.
    assert_eq!(repo(&w, "/repos/toolgate").await.status(), 200);
    assert_eq!(w.sts.server.seen().len(), 2);
    assert_eq!(w.tool.seen().pop().unwrap().bearer(), "exchanged-2-github");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_exchange_names_the_sts_by_scheme_host_and_path() {
    let w = World::start(Options::default()).await;
    w.sts.fail_with(400);
    let (status, body) = problem(repo(&w, "/repos/toolgate").await).await;
    assert_eq!(status, 503);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("the STS at {} answered 400", w.sts.endpoint())),
        "{detail}"
    );
    assert!(!detail.contains(crate::STS_CLIENT_SECRET), "{detail}");
    assert!(w.tool.seen().is_empty());
}

/// `toolgate check` on a config whose one credential exchanges at `endpoint`.
fn check_sts(endpoint: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let svid = crate::svid(&crate::issuer_key(), crate::AGENT_ID);
    crate::support::write(dir.path(), "identity/svid.jwt", &svid);
    crate::support::write(
        dir.path(),
        "policy.rego",
        "package toolgate\ndefault decision := false\n",
    );
    crate::support::write(
        dir.path(),
        "toolgate.yaml",
        &format!(
            r#"
agent: {{ id_file: identity/svid.jwt }}
tools:
  - {{ name: github, hosts: [github.test], credential: github }}
policy: {{ files: [policy.rego] }}
credentials:
  github: {{ kind: token_exchange, endpoint: "{endpoint}", audience: github }}
"#
        ),
    );
    std::process::Command::new(crate::support::binary())
        .args(["check", "-c"])
        .arg(dir.path().join("toolgate.yaml"))
        .output()
        .unwrap()
}

#[test]
fn check_refuses_an_sts_url_with_a_query_or_userinfo_and_warns_on_remote_plain_http() {
    for (endpoint, reason) in [
        (
            "https://sts.example.com/token?api_key=k3y-in-url",
            "credentials.github.endpoint: must not hold a query string",
        ),
        (
            "https://svc:pa55word@sts.example.com/token",
            "credentials.github.endpoint: must not hold credentials",
        ),
    ] {
        let out = check_sts(endpoint);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{endpoint}: {stderr}");
        assert!(stderr.contains(reason), "{endpoint}: {stderr}");
        assert!(
            !stderr.contains("k3y-in-url") && !stderr.contains("pa55word"),
            "{stderr}"
        );
    }

    let out = check_sts("http://sts.example.com/token");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("warning: ")
            && l.contains(
                "toolgate.yaml: credentials.github.endpoint: plain http:// to a host other than loopback"
            )),
        "{stderr}"
    );

    // Positive control: https, or plain http on loopback (a local STS), loads quietly.
    for quiet in [
        "https://sts.example.com/token",
        "http://127.0.0.1:8080/token",
    ] {
        let out = check_sts(quiet);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{quiet}: {stderr}");
        assert!(!stderr.contains("warning"), "{quiet}: {stderr}");
    }
}
