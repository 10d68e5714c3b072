use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigErrors, EmbeddedFiles, OnUnavailable, StateBackend, StaticEnv};

const POLICY: &[u8] = b"package toolgate\nimport rego.v1\ndefault decision := false\n";

fn load(state: &str) -> Result<Config, ConfigErrors> {
    let yaml = format!("agent: {{ id: a }}\npolicy: {{ files: [p.rego] }}\nstate: {state}\n");
    let yaml: &'static str = Box::leak(yaml.into_boxed_str());
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("p.rego", POLICY),
        (
            "redis-url",
            b"redis://toolgate:s3cret@redis.internal:6380/2\n",
        ),
        ("redis-password", b"hunter2-but-longer\n"),
        ("empty", b"\n"),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default())
}

fn messages(state: &str) -> Vec<String> {
    load(state)
        .unwrap_err()
        .errors
        .into_iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

#[test]
fn redis_takes_its_defaults() {
    let c = load("{ backend: redis, url: \"redis://127.0.0.1:6379\" }").unwrap();
    let StateBackend::Redis(r) = &c.state.backend else {
        panic!("not redis: {:?}", c.state.backend);
    };
    assert_eq!(r.url.expose(), "redis://127.0.0.1:6379");
    assert_eq!(r.prefix, "toolgate");
    assert_eq!(r.on_unavailable, OnUnavailable::Deny);
    assert_eq!(r.timeout, Duration::from_millis(50));
    assert_eq!(r.max_tasks, 10_000);
    assert!(r.password.is_none());
}

#[test]
fn redis_reads_its_url_and_password_from_files_and_unix_sockets_are_normalised() {
    let c = load(
        "{ backend: redis, url_file: redis-url, password_file: redis-password, prefix: \"tg:prod\", on_unavailable: local, timeout: 20ms, max_tasks: 100 }",
    )
    .unwrap();
    let StateBackend::Redis(r) = &c.state.backend else {
        panic!("not redis");
    };
    assert_eq!(
        r.url.expose(),
        "redis://toolgate:s3cret@redis.internal:6380/2"
    );
    assert_eq!(
        r.password.as_ref().map(|p| p.expose()),
        Some("hunter2-but-longer")
    );
    assert_eq!(r.prefix, "tg:prod");
    assert_eq!(r.on_unavailable, OnUnavailable::Local);
    assert_eq!(r.timeout, Duration::from_millis(20));
    assert_eq!(r.max_tasks, 100);
    for (given, want) in [
        ("unix:/run/redis.sock", "redis+unix:///run/redis.sock"),
        ("unix:///run/redis.sock", "redis+unix:///run/redis.sock"),
        ("rediss://redis.internal", "rediss://redis.internal"),
    ] {
        let c = load(&format!("{{ backend: redis, url: \"{given}\" }}")).unwrap();
        let StateBackend::Redis(r) = &c.state.backend else {
            panic!("not redis");
        };
        assert_eq!(r.url.expose(), want);
    }
}

#[test]
fn bad_redis_settings_are_each_reported_and_the_url_is_never_quoted() {
    let m = messages(
        "{ backend: redis, url: \"http://user:pa55word@x\", prefix: \"has space\", on_unavailable: open, timeout: 10s, max_tasks: 0, dir: d }",
    );
    let joined = m.join("\n");
    for says in [
        "state.url: is not a Redis URL",
        "state.prefix: must be 1 to 64",
        "state.on_unavailable: \"open\" is neither",
        "state.timeout: must be at most 5s",
        "state.max_tasks: must be 1 to",
        "state.dir: applies to the memory backend only",
    ] {
        assert!(joined.contains(says), "{says:?} missing in:\n{joined}");
    }
    assert!(!joined.contains("pa55word"), "{joined}");
    let m = messages("{ backend: redis }").join("\n");
    assert!(m.contains("state.url: backend redis needs url"), "{m}");
    let m = messages("{ backend: redis, url: \"redis://x\", url_file: redis-url }").join("\n");
    assert!(m.contains("not both"), "{m}");
    let m = messages("{ backend: redis, url_file: empty }").join("\n");
    assert!(
        m.contains("state.url_file:") && m.contains("is empty"),
        "{m}"
    );
    let m = messages("{ backend: memory, prefix: x }").join("\n");
    assert!(m.contains("apply to `backend: redis` only"), "{m}");
    let m = messages("{ backend: etcd }").join("\n");
    assert!(m.contains("use `memory` or `redis`"), "{m}");
}
