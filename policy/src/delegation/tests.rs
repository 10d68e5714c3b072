#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use serde_json::json;

use regorus::Value;

use super::*;
use crate::config::{generate_ed25519_pem, Config, EmbeddedFiles, SigningKey, StaticEnv};

const A: &str = "spiffe://t/agent-a";
const B: &str = "spiffe://t/agent-b";
const C: &str = "spiffe://t/agent-c";

#[test]
fn a_request_is_read_strictly() {
    let r = parse_request(
        br#"{"to": "spiffe://t/agent-b", "actions": ["ticket.read", "ticket.read", "repo.read"], "scopes": ["s:1"], "ttl": "10m"}"#,
    )
    .unwrap();
    assert_eq!(r.to, B);
    assert_eq!(r.actions, ["ticket.read", "repo.read"], "repeats collapse");
    assert_eq!(r.scopes, ["s:1"]);
    assert_eq!(r.ttl, Some(Duration::from_secs(600)));
    let many: Vec<String> = (0..65).map(|i| format!("a{i}")).collect();
    for (body, want) in [
        (json!({"to": B}), "missing field `actions`"),
        (json!({"to": B, "actions": []}), "at least one action"),
        (
            json!({"to": "has space", "actions": ["a"]}),
            "receiving agent's id",
        ),
        (json!({"to": "", "actions": ["a"]}), "receiving agent's id"),
        (
            json!({"to": B, "actions": ["a b"]}),
            "is not an action name",
        ),
        (
            json!({"to": B, "actions": ["a"], "scopes": ["q\""]}),
            "is not a scope token",
        ),
        (json!({"to": B, "actions": many}), "at most 64 actions"),
        (
            json!({"to": B, "actions": ["a"], "ttl": "soon"}),
            "is not a duration",
        ),
        (
            json!({"to": B, "actions": ["a"], "ttl": "10ms"}),
            "is not a duration",
        ),
        (
            json!({"to": B, "actions": ["a"], "extra": 1}),
            "unknown field",
        ),
    ] {
        let err = parse_request(body.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains(want), "{body}: {err}");
    }
    assert!(parse_request(b"\xff\x00").is_err());
}

fn request(actions: &[&str], scopes: &[&str]) -> Request {
    Request {
        to: B.to_string(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl: None,
    }
}

#[test]
fn a_grant_is_never_wider_than_what_the_delegator_holds() {
    // An orchestrator's token restricting nothing: everything asked is granted.
    let root = Own::of(Some(&json!({"sub": "user:alice", "exp": 100})), true);
    assert_eq!(root.actions, None);
    assert!(root.task_verified);
    let g = grant(&request(&["r", "w"], &["s"]), &root, A).unwrap();
    assert_eq!(
        (g.actions, g.scopes, g.depth),
        (vec!["r".into(), "w".into()], vec!["s".into()], 1)
    );
    assert!(g.dropped.is_empty());
    // A delegated task holds exactly its token's actions and scopes: the intersection.
    let delegated = Own::of(
        Some(&json!({"depth": 1, "actions": ["r"], "scope": "s", "task_verified": false})),
        true,
    );
    assert!(
        !delegated.task_verified,
        "the delegation says where the task started"
    );
    let g = grant(&request(&["r", "w"], &["s", "t"]), &delegated, A).unwrap();
    assert_eq!(g.actions, ["r"]);
    assert_eq!(g.scopes, ["s"]);
    assert_eq!(g.dropped, ["w", "t"]);
    assert_eq!(g.depth, 2);
    // A delegation without scopes holds none.
    let bare = Own::of(Some(&json!({"depth": 1, "actions": ["r"]})), true);
    assert_eq!(
        grant(&request(&["r"], &["s"]), &bare, A).unwrap().scopes,
        Vec::<String>::new()
    );
    // Nothing held, itself, too deep.
    assert_eq!(
        grant(&request(&["w"], &[]), &delegated, A),
        Err(GrantError::NothingHeld("w".into()))
    );
    assert_eq!(
        grant(&request(&["r"], &[]), &root, B),
        Err(GrantError::ToSelf)
    );
    let deep = Own::of(Some(&json!({"depth": MAX_DEPTH, "actions": ["r"]})), true);
    assert_eq!(
        grant(&request(&["r"], &[]), &deep, A),
        Err(GrantError::TooDeep(MAX_DEPTH))
    );
    // An orchestrator's token that does restrict: its own actions bound the grant.
    let scoped = Own::of(Some(&json!({"actions": ["r"], "scope": "s"})), true);
    assert_eq!(
        grant(&request(&["r", "w"], &["s", "t"]), &scoped, A)
            .unwrap()
            .dropped,
        ["w", "t"]
    );
}

#[test]
fn a_delegation_expires_by_its_ttl_its_cap_and_the_delegators_token() {
    let hour = Duration::from_secs(3600);
    assert_eq!(expiry(1000, None, hour, None), 4600);
    assert_eq!(
        expiry(1000, Some(Duration::from_secs(60)), hour, None),
        1060
    );
    assert_eq!(expiry(1000, Some(hour * 5), hour, None), 4600);
    assert_eq!(expiry(1000, None, hour, Some(2000)), 2000);
    // Never born expired.
    assert_eq!(expiry(1000, None, hour, Some(900)), 1001);
}

#[test]
fn the_actor_chain_names_the_delegator_then_where_the_task_came_from() {
    assert_eq!(act(A, None), json!({"sub": A}));
    assert_eq!(
        act(A, Some(&json!({"sub": "user:alice"}))),
        json!({"sub": A, "act": {"sub": "user:alice"}})
    );
    // An orchestrator's token naming the agent itself adds nothing.
    assert_eq!(act(A, Some(&json!({"sub": A}))), json!({"sub": A}));
    // An orchestrator's own actor chain is kept as it is.
    let root = json!({"sub": "user:alice", "act": {"sub": "orchestrator"}});
    assert_eq!(
        act(A, Some(&root)),
        json!({"sub": A, "act": {"sub": "orchestrator"}})
    );
    // A delegated task's chain grows by one.
    let delegated = json!({"depth": 1, "sub": B, "act": {"sub": A, "act": {"sub": "user:alice"}}});
    assert_eq!(
        act(B, Some(&delegated)),
        json!({"sub": B, "act": {"sub": A, "act": {"sub": "user:alice"}}})
    );
}

/// Toolgates A and B, each with a delegation key, as C's task-token issuers.
struct Issuers {
    a: SigningKey,
    b: SigningKey,
    config: Config,
}

fn key() -> SigningKey {
    SigningKey::from_pem(
        generate_ed25519_pem().unwrap().as_bytes(),
        jsonwebtoken::Algorithm::EdDSA,
    )
    .unwrap()
}

fn issuers() -> Issuers {
    let (a, b) = (key(), key());
    let doc = |k: &SigningKey| json!({"keys": [k.jwk()]}).to_string();
    let (ja, jb) = (doc(&a), doc(&b));
    let yaml = format!(
        "agent: {{ id: \"{C}\" }}\npolicy: {{ files: [p.rego] }}\ntask_tokens:\n  issuers:\n    - {{ issuer: ta, jwks_file: a.json, audience: \"{C}\" }}\n    - {{ issuer: tb, jwks_file: b.json, audience: \"{C}\" }}\n"
    );
    let leak = |s: String| -> &'static [u8] { Box::leak(s.into_boxed_str()).as_bytes() };
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", leak(yaml)),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
        ("a.json", leak(ja)),
        ("b.json", leak(jb)),
    ]);
    let config =
        Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap();
    Issuers { a, b, config }
}

fn sign(key: &SigningKey, claims: &Json) -> String {
    jsonwebtoken::encode(key.header(), claims, key.encoding_key()).unwrap()
}

fn later() -> u64 {
    secs(SystemTime::now()) + 600
}

/// A → B, depth 1.
fn first_hop(i: &Issuers) -> (Json, String) {
    let claims = json!({
        "iss": "ta", "sub": B, "aud": B, "exp": later(), "task": "T", "depth": 1,
        "actions": ["r", "w"], "scope": "s", "task_verified": true,
        "act": {"sub": A, "act": {"sub": "user:alice"}},
    });
    let token = sign(&i.a, &claims);
    (claims, token)
}

/// B → C, depth 2, with `parent`.
fn second_hop(parent: &str) -> Map<String, Json> {
    let claims = json!({
        "iss": "tb", "sub": C, "aud": C, "exp": later() - 10, "task": "T", "depth": 2,
        "actions": ["r"], "scope": "s", "task_verified": true,
        "act": {"sub": B, "act": {"sub": A, "act": {"sub": "user:alice"}}},
        "parent": parent,
    });
    claims.as_object().unwrap().clone()
}

fn received(
    i: &Issuers,
    claims: &Map<String, Json>,
) -> Result<Option<Delegation>, DelegationError> {
    Delegation::from_claims(claims, C, i.config.task_tokens.as_ref().unwrap())
}

#[test]
fn a_two_hop_chain_is_checked_hop_by_hop() {
    let i = issuers();
    let (_, ab) = first_hop(&i);
    let bc = second_hop(&ab);
    let d = received(&i, &bc).unwrap().unwrap();
    assert_eq!(d.depth, 2);
    assert_eq!(d.agents, [A, B, C]);
    assert_eq!(d.actions, ["r"]);
    assert_eq!(d.scopes, ["s"]);
    assert!(d.task_verified);
    assert!(d.allows("r") && d.allows(ACTION) && !d.allows("w"));
    let mut scopes = vec!["s".to_string(), "admin".to_string()];
    d.narrow(&mut scopes);
    assert_eq!(scopes, ["s"]);

    // An orchestrator's token is not a delegation.
    let plain = json!({"iss": "ta", "sub": C, "task": "T"});
    assert_eq!(received(&i, plain.as_object().unwrap()), Ok(None));

    let with = |f: &dyn Fn(&mut Map<String, Json>)| {
        let mut c = bc.clone();
        f(&mut c);
        received(&i, &c).unwrap_err().to_string()
    };
    assert_eq!(
        with(&|c| {
            c.insert("actions".into(), json!(["r", "x"]));
        }),
        format!("widens its parent delegation: action \"x\" was not delegated to {B}")
    );
    assert_eq!(
        with(&|c| {
            c.insert("scope".into(), json!("s t"));
        }),
        format!("widens its parent delegation: scope \"t\" was not delegated to {B}")
    );
    assert_eq!(
        with(&|c| {
            c.insert("exp".into(), json!(later() + 100));
        }),
        "widens its parent delegation: it outlives its parent"
    );
    assert_eq!(
        with(&|c| {
            c.insert("task".into(), json!("T-other"));
        }),
        "does not follow from its parent delegation: its parent is for another task"
    );
    assert_eq!(
        with(&|c| {
            c.insert("act".into(), json!({"sub": "spiffe://t/mallory", "act": {"sub": A}}));
        }),
        "does not follow from its parent delegation: its parent was not for the agent that delegated it"
    );
    assert_eq!(
        with(&|c| {
            c.insert("act".into(), json!({"sub": B, "act": {"sub": A}}));
        }),
        "does not follow from its parent delegation: its actor chain is not its parent's with the delegator added"
    );
    assert_eq!(
        with(&|c| {
            c.insert("depth".into(), json!(3));
        }),
        "does not follow from its parent delegation: its depth is not its parent's plus one"
    );
    assert_eq!(
        with(&|c| {
            c.insert("depth".into(), json!(4));
        }),
        "is a malformed delegation: `act` must name one delegating agent per hop"
    );
    assert!(with(&|c| {
        c.remove("parent");
    })
    .contains("must carry its `parent`"));
    assert!(with(&|c| {
        c.insert("parent".into(), json!("x.y.z"));
    })
    .starts_with("has a parent delegation that is not a well-formed JWT"));
    // A parent signed by someone the receiver does not trust.
    let (first, _) = first_hop(&i);
    let mut stranger = first.clone();
    stranger["iss"] = json!("tz");
    let mallory = sign(&key(), &stranger);
    assert_eq!(
        with(&|c| {
            c.insert("parent".into(), json!(mallory));
        }),
        "has a parent delegation from issuer \"tz\", which is not trusted"
    );
    // A parent signed by the right issuer's name with another key.
    let forged = sign(&i.b, &first);
    assert!(with(&|c| {
        c.insert("parent".into(), json!(forged));
    })
    .starts_with("has a parent delegation that is signed with key"));
    // An expired parent.
    let mut old = first.clone();
    old["exp"] = json!(1000);
    let expired = sign(&i.a, &old);
    assert!(with(&|c| {
        c.insert("parent".into(), json!(expired));
    })
    .starts_with("has a parent delegation that expired at"));
    // A child claiming an orchestrator started a task its parent says none did.
    let mut unverified = first.clone();
    unverified["task_verified"] = json!(false);
    let parent = sign(&i.a, &unverified);
    assert_eq!(
        with(&|c| {
            c.insert("parent".into(), json!(parent));
        }),
        "widens its parent delegation: it claims an orchestrator named the task, which its parent does not"
    );
}

#[test]
fn a_first_hop_must_be_for_this_agent_and_well_formed() {
    let i = issuers();
    let (mut first, _) = first_hop(&i);
    first["sub"] = json!(C);
    first["aud"] = json!(C);
    let ok = first.as_object().unwrap().clone();
    let d = received(&i, &ok).unwrap().unwrap();
    assert_eq!(d.agents, [A, C]);
    assert_eq!(d.issuer, "ta");
    let err = |f: &dyn Fn(&mut Map<String, Json>)| {
        let mut c = ok.clone();
        f(&mut c);
        received(&i, &c).unwrap_err()
    };
    assert_eq!(
        err(&|c| {
            c.insert("sub".into(), json!(B));
        }),
        DelegationError::NotForThisAgent(B.into())
    );
    for bad in [json!(0), json!("1"), json!(-1), json!(1.5)] {
        assert!(matches!(
            err(&|c| {
                c.insert("depth".into(), bad.clone());
            }),
            DelegationError::Malformed(_)
        ));
    }
    assert_eq!(
        err(&|c| {
            c.insert("depth".into(), json!(MAX_DEPTH + 1));
        }),
        DelegationError::TooDeep(MAX_DEPTH + 1)
    );
    for (key, value) in [
        ("actions", json!([])),
        ("actions", json!("r")),
        ("actions", json!(["has space"])),
        ("scope", json!(["s"])),
        ("act", json!({"no": "sub"})),
        ("parent", json!("x.y.z")),
    ] {
        assert!(
            matches!(
                err(&|c| {
                    c.insert(key.into(), value.clone());
                }),
                DelegationError::Malformed(_)
            ),
            "{key}: {value}"
        );
    }
    assert!(matches!(
        err(&|c| {
            c.remove("task");
        }),
        DelegationError::Malformed(_)
    ));
}

#[test]
fn policy_sees_the_delegation_in_input_task() {
    let d = Delegation {
        depth: 1,
        agents: vec![A.into(), B.into()],
        actions: vec!["r".into()],
        scopes: vec![],
        issuer: "ta".into(),
        task_verified: true,
    };
    let mut input = Value::from(json!({"task": {"id": "T"}, "action": {}}));
    d.annotate(&mut input);
    let shown: Json = serde_json::to_value(&input).unwrap();
    assert_eq!(
        shown["task"]["delegation"],
        json!({"depth": 1, "agents": [A, B], "actions": ["r"], "scopes": [], "issuer": "ta"})
    );
    assert_eq!(shown["task"]["id"], "T");
}
