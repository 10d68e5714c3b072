//! Minted credentials (`kind: jwt`): claims verified by PyJWT against the admin JWKS, key
//! rotation with its overlap, and `toolgate keys init`.

use std::time::{Duration, Instant};

use crate::support;
use crate::{verify_independently, Options, World, AGENT_ID};

pub(crate) async fn pay(w: &World, task: &str) -> reqwest::Response {
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
    let w = World::start(Options {
        max_ttl: "6s",
        ..Options::default()
    })
    .await;
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
