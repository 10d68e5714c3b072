#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use toolgate_policy::config::SecretText;

use super::{sts_name, Exchanges, Key, SubjectHash};

fn key(scope: &str, subject: &str) -> Key {
    Key {
        credential: "github".to_string(),
        endpoint: "https://sts.example.com/token".to_string(),
        audience: "github".to_string(),
        scope: scope.to_string(),
        subject: SubjectHash::of(&SecretText::new(subject)),
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
