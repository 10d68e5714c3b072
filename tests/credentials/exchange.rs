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
