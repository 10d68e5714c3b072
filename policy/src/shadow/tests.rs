use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::approval::Ask;
use crate::config::{EmbeddedFiles, StaticEnv};
use crate::evaluate::CredentialGrant;

fn config() -> Config {
    let yaml = br#"
agent: { id: a }
tools:
  - name: jira
    hosts: [jira.test]
    credential: jira-token
    actions:
      - { name: ticket.read, match: { method: GET, path: "/issue/{issue}" } }
policy: { files: [p.rego] }
credentials:
  jira-token: { kind: secret, env: T, header: Authorization }
  admin-token: { kind: secret, env: T, header: Authorization }
"#;
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
    ]);
    let env = StaticEnv([("T".to_string(), "x".to_string())].into());
    Config::load_from(Path::new("toolgate.yaml"), &files, &env).unwrap()
}

fn allow() -> Decision {
    Decision {
        effect: Effect::Allow,
        ..Decision::deny("ok")
    }
}

fn named(name: &str) -> Decision {
    let mut d = allow();
    d.credential.name = Some(name.to_string());
    d
}

#[test]
fn a_credential_is_compared_as_the_proxy_selects_it() {
    let c = config();
    let tool = c.catalog.tool(0);
    let default = Verdict::of(&c, tool, &allow());
    assert_eq!(default.credential.as_ref().unwrap().name, "jira-token");
    // Naming the tool's default is the same credential: no disagreement.
    assert!(!disagree(&c, tool, &allow(), &named("jira-token")));
    assert!(default
        .differences(&Verdict::of(&c, tool, &named("jira-token")))
        .is_empty());
    // Another credential, or the same one with other scopes or ttl, is one.
    assert!(disagree(&c, tool, &allow(), &named("admin-token")));
    let mut scoped = allow();
    scoped.credential = CredentialGrant {
        name: None,
        scopes: vec!["read".into()],
        ttl: Some(Duration::from_secs(60)),
    };
    assert!(disagree(&c, tool, &allow(), &scoped));
    let v = Verdict::of(&c, tool, &scoped);
    assert_eq!(default.differences(&v), ["credential"]);
    assert_eq!(v.credential.as_ref().unwrap().ttl.as_deref(), Some("1m"));
    // A credential that is not configured makes the allow an error, as in the proxy.
    let missing = Verdict::of(&c, tool, &named("nope"));
    assert_eq!(missing.effect, Ruling::Error);
    assert!(missing.reason.contains("\"nope\""), "{}", missing.reason);
    assert!(disagree(&c, tool, &allow(), &named("nope")));
    // Two broken allows are the same error.
    assert!(!disagree(&c, tool, &named("nope"), &named("other")));
}

#[test]
fn wording_is_not_a_disagreement_and_everything_a_decision_does_is() {
    let c = config();
    let tool = c.catalog.tool(0);
    let reworded = Decision::deny("another reason");
    assert!(!disagree(&c, tool, &Decision::deny("no"), &reworded));
    let mut held = Decision::deny("no");
    held.approval = Some(Ask::default());
    let mut labelled = Decision::deny("no");
    labelled.labels = vec![Arc::from("pii")];
    let cases: [(Decision, Decision, &[&str]); 6] = [
        (allow(), Decision::deny("no"), &["effect"]),
        (Decision::deny("no"), held.clone(), &["effect", "approval"]),
        (
            Decision::deny("no"),
            Decision::error("policy error", "x"),
            &["effect"],
        ),
        (Decision::deny("no"), labelled.clone(), &["labels"]),
        (labelled.clone(), labelled.clone(), &[]),
        (allow(), named("admin-token"), &["credential"]),
    ];
    for (live, shadow, want) in cases {
        let differences = Verdict::of(&c, tool, &live).differences(&Verdict::of(&c, tool, &shadow));
        assert_eq!(differences, want, "{live:?} vs {shadow:?}");
        assert_eq!(
            disagree(&c, tool, &live, &shadow),
            !want.is_empty(),
            "{live:?} vs {shadow:?}"
        );
    }
}

#[test]
fn a_change_is_classified_from_the_recorded_side() {
    let c = config();
    let tool = c.catalog.tool(0);
    let v = |d: &Decision| Verdict::of(&c, tool, d);
    let mut held = Decision::deny("no");
    held.approval = Some(Ask::default());
    assert_eq!(Change::of(&v(&allow()), &v(&allow())), Change::Unchanged);
    assert_eq!(
        Change::of(&v(&Decision::deny("a")), &v(&Decision::deny("b"))),
        Change::Unchanged
    );
    assert_eq!(
        Change::of(&v(&allow()), &v(&Decision::deny("no"))),
        Change::NewlyDenied
    );
    assert_eq!(Change::of(&v(&allow()), &v(&held)), Change::NewlyDenied);
    assert_eq!(
        Change::of(&v(&Decision::deny("no")), &v(&allow())),
        Change::NewlyAllowed
    );
    assert_eq!(
        Change::of(&v(&allow()), &v(&named("admin-token"))),
        Change::ChangedCredential
    );
    assert_eq!(
        Change::of(&v(&Decision::deny("no")), &v(&held)),
        Change::Changed
    );
}

#[test]
fn a_verdict_reads_back_as_it_was_written() {
    let c = config();
    let mut held = Decision::deny("no");
    held.approval = Some(Ask {
        approvers: vec!["alice".into()],
        ttl: Some(Duration::from_secs(600)),
        ..Ask::default()
    });
    held.labels = vec![Arc::from("b"), Arc::from("a")];
    let v = Verdict::of(&c, c.catalog.tool(0), &held);
    assert_eq!(v.labels, ["a", "b"]);
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["effect"], "approval");
    assert_eq!(json["approval"]["approvers"][0], "alice");
    let back: Verdict = serde_json::from_value(json).unwrap();
    assert_eq!(back, v);
}
