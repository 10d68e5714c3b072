use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigErrors, EmbeddedFiles, StaticEnv};

const POLICY: &[u8] = b"package toolgate\nimport rego.v1\ndefault decision := false\n";
const BASE: &str =
    "listen: { admin: \"0.0.0.0:15000\" }\nagent: { id: a }\npolicy: { files: [policy/*.rego] }\n";

fn load(extra: &str) -> Result<Config, ConfigErrors> {
    let yaml = format!("{BASE}{extra}");
    let files = EmbeddedFiles::new(&[
        ("policy/main.rego", POLICY),
        (
            "hook-url",
            b"https://hooks.slack.example/services/T0/B0/secret-part\n",
        ),
    ]);
    let files = Overlay(files, yaml.into_bytes());
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default())
}

/// The embedded files plus a `toolgate.yaml` built at run time.
#[derive(Debug)]
struct Overlay(EmbeddedFiles, Vec<u8>);

impl crate::config::Files for Overlay {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        if path == Path::new("toolgate.yaml") {
            return Ok(self.1.clone());
        }
        self.0.read(path)
    }
    fn glob(&self, pattern: &str) -> Result<Vec<std::path::PathBuf>, String> {
        self.0.glob(pattern)
    }
    fn locate(&self, path: &Path) -> std::path::PathBuf {
        self.0.locate(path)
    }
}

fn messages(extra: &str) -> Vec<String> {
    load(extra)
        .unwrap_err()
        .errors
        .into_iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

#[test]
fn defaults_point_at_the_admin_listener_page_and_bound_everything() {
    let c = load("").unwrap();
    let a = &c.approvals;
    // A wildcard admin address is reached on loopback.
    assert_eq!(a.page_url, "http://127.0.0.1:15000/approvals");
    assert_eq!(a.approve_url("abc"), "http://127.0.0.1:15000/approvals#abc");
    assert_eq!(a.max_pending, 1_000);
    assert_eq!(a.default_ttl, Duration::from_secs(900));
    assert_eq!(a.max_ttl, Duration::from_secs(86_400));
    assert_eq!(a.max_wait, Duration::from_secs(60));
    assert_eq!(a.retention, Duration::from_secs(3_600));
    assert!(a.webhook.is_none());
    // A decision's ttl is cut to the maximum; none takes the default.
    assert_eq!(a.ttl(None), Duration::from_secs(900));
    assert_eq!(a.ttl(Some(Duration::from_secs(10 * 86_400))), a.max_ttl);
}

#[test]
fn every_key_is_read_and_the_webhook_url_may_come_from_a_file() {
    let c = load(
        "approvals: { page_url: \"https://ops.example.com/toolgate/approvals\", max_pending: 20, \
         default_ttl: 5m, max_ttl: 1h, max_wait: 30s, retention: 10m, \
         webhook: { url_file: hook-url, timeout: 2s, retries: 5 } }\n",
    )
    .unwrap();
    let a = &c.approvals;
    assert_eq!(a.page_url, "https://ops.example.com/toolgate/approvals");
    assert_eq!((a.max_pending, a.max_wait), (20, Duration::from_secs(30)));
    let hook = a.webhook.as_ref().unwrap();
    assert_eq!(
        hook.url.expose(),
        "https://hooks.slack.example/services/T0/B0/secret-part"
    );
    assert_eq!(hook.origin, "https://hooks.slack.example");
    assert_eq!((hook.timeout, hook.retries), (Duration::from_secs(2), 5));
}

#[test]
fn bad_settings_are_each_reported_without_echoing_the_webhook_url() {
    let errors = messages(
        "approvals: { page_url: \"ftp://x\", max_pending: 0, default_ttl: 2d, max_ttl: 1d, \
         max_wait: 1h, retention: never, \
         webhook: { url: \"not a url with secret-part\", retries: 11 } }\n",
    );
    let all = errors.join("\n");
    for says in [
        "approvals.page_url: \"ftp://x\" must start with http:// or https://",
        "approvals.max_pending: must be 1 to 2000",
        "approvals.default_ttl: 2d is longer than approvals.max_ttl (1d)",
        "approvals.max_wait: must be at most 10m",
        "approvals.retention: \"never\" is not a duration",
    ] {
        assert!(all.contains(says), "missing {says:?} in\n{all}");
    }
    assert_eq!(
        messages("approvals: { bogus: 1 }\n"),
        ["approvals.bogus: unknown key"]
    );
    let errors = messages(
        "approvals: { webhook: { url: \"https://user:pw@hooks.example/secret-part\" } }\n",
    );
    let all = errors.join("\n");
    assert!(
        all.contains("approvals.webhook.url: the URL must not carry credentials"),
        "{all}"
    );
    assert!(!all.contains("secret-part"), "the URL is echoed: {all}");
    let errors =
        messages("approvals: { webhook: { url: \"https://h.example/\", url_file: hook-url } }\n");
    assert!(
        errors
            .join("\n")
            .contains("give exactly one of url and url_file"),
        "{errors:?}"
    );
    let errors = messages("approvals: { webhook: { url: \"https://h.example/\", retries: 11 } }\n");
    assert!(
        errors
            .join("\n")
            .contains("approvals.webhook.retries: must be at most 10"),
        "{errors:?}"
    );
}
