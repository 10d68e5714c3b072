#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use toolgate_policy::config::SecretText;

use super::{sts_name, Cached, Exchanges, Key, Retired, SubjectHash, MAX_RETIRED};

fn key(scope: &str, subject: &str) -> Key {
    Key {
        credential: "github".to_string(),
        endpoint: "https://sts.example.com/token".to_string(),
        audience: "github".to_string(),
        scope: scope.to_string(),
        subject: SubjectHash::of(&SecretText::new(subject)),
        task: "T-1".to_string(),
    }
}

#[test]
fn the_sts_is_named_by_scheme_host_and_path_only() {
    for (url, shown) in [
        (
            "https://sts.example.com/oauth/token?api_key=k3y&tenant=t",
            "https://sts.example.com/oauth/token",
        ),
        (
            "https://user:pa55@sts.example.com:8443/token",
            "https://sts.example.com:8443/token",
        ),
        ("http://[::1]:9000/t?x=1", "http://[::1]:9000/t"),
        ("https://sts.example.com", "https://sts.example.com/"),
    ] {
        let uri: http::Uri = url.parse().unwrap();
        assert_eq!(sts_name(&uri), shown, "{url}");
    }
}

#[test]
fn the_cache_key_holds_a_hash_of_the_subject_never_the_token() {
    let token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudC1vbmUifQ.c2ln";
    let k = key("read", token);
    let shown = format!("{k:?}");
    assert!(!shown.contains(token), "{shown}");
    assert!(!shown.contains("c2ln"), "{shown}");
    assert!(shown.contains("subject: sha256:"), "{shown}");
    // Another identity, same everything else: another entry.
    assert_ne!(k, key("read", "another-identity-token"));
    assert_eq!(k, key("read", token));
}

fn cached(x: &Exchanges) -> usize {
    x.inner.lock().unwrap().slots.len()
}

#[test]
fn a_new_identity_drops_the_old_identitys_tokens() {
    let x = Exchanges::default();
    let _ = x.slot(key("read", "identity-one"));
    let _ = x.slot(key("write", "identity-one"));
    assert_eq!(cached(&x), 2);
    let _ = x.slot(key("read", "identity-two"));
    assert_eq!(cached(&x), 1, "the first identity's entries must be gone");
    let _ = x.slot(key("read", "identity-two"));
    assert_eq!(cached(&x), 1);
}

fn in_task(task: &str, scope: &str) -> Key {
    Key {
        task: task.to_string(),
        ..key(scope, "identity-one")
    }
}

fn cache(x: &Exchanges, key: Key, token: &str, life: Duration) {
    let slot = x.slot(key);
    let now = Instant::now();
    *slot.try_lock().unwrap() = Some(Cached {
        token: SecretText::new(token),
        refresh_at: now + life,
        expires_at: now + life,
        revocation: None,
    });
}

fn tokens(retired: &[Retired]) -> Vec<String> {
    let mut t: Vec<String> = retired
        .iter()
        .map(|r| r.token.expose().to_string())
        .collect();
    t.sort();
    t
}

#[tokio::test]
async fn ending_a_task_takes_out_exactly_its_tokens_replaced_ones_included() {
    let x = Exchanges::default();
    let hour = Duration::from_secs(3600);
    cache(&x, in_task("T-1", "read"), "t1-read", hour);
    cache(&x, in_task("T-1", "write"), "t1-write", hour);
    cache(&x, in_task("T-2", "read"), "t2-read", hour);
    // A token a refresh replaced is still valid: it dies with its task too; an expired one
    // is not worth revoking.
    {
        let mut inner = x.inner.lock().unwrap();
        let now = Instant::now();
        let old = |token: &str, life: Duration| Cached {
            token: SecretText::new(token),
            refresh_at: now,
            expires_at: now + life,
            revocation: None,
        };
        inner.retire("T-1", old("t1-replaced", hour), now);
        inner.retire("T-1", old("t1-expired", Duration::ZERO), now);
    }
    let ended = x.end_task(Some("T-1")).await;
    assert_eq!(tokens(&ended), ["t1-read", "t1-replaced", "t1-write"]);
    assert_eq!(cached(&x), 1, "the other task's token stays in service");
    assert!(x.end_task(Some("T-1")).await.is_empty(), "nothing twice");
    // The agent revoked: every task's.
    assert_eq!(tokens(&x.end_task(None).await), ["t2-read"]);
    assert_eq!(cached(&x), 0);
}

#[test]
fn replaced_tokens_are_bounded() {
    let mut inner = super::Inner::default();
    let now = Instant::now();
    for i in 0..MAX_RETIRED + 10 {
        let cached = Cached {
            token: SecretText::new(&format!("t{i}")),
            refresh_at: now,
            expires_at: now + Duration::from_secs(60),
            revocation: None,
        };
        inner.retire("T", cached, now);
    }
    assert_eq!(inner.retired.len(), MAX_RETIRED);
    assert_eq!(
        inner.retired[0].1.token.expose(),
        "t10",
        "the oldest left first"
    );
}
