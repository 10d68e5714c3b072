//! Delegation tokens the receiving toolgate must refuse, each with a clear problem — forged,
//! tampered, from an unknown issuer, expired, for another agent, widened along the chain —
//! beside the genuine ones it must accept (the positive controls), and a delegator that
//! cannot hand on more than it holds.

use base64::Engine as _;
use serde_json::{json, Value as Json};

use crate::servers::Sts;
use crate::support::{problem, ToolServer};
use crate::{
    bearer, claims_of, issuer_of, new_key, now, sign, task_token, verify_independently, Agent,
    Setup, AGENT_A, AGENT_B, AGENT_C, USER,
};

/// `token` with its payload replaced by `claims`, its signature kept.
fn tampered(token: &str, claims: &Json) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    parts.join(".")
}

async fn refused(agent: &Agent, token: &str) -> String {
    let (status, body) = problem(agent.read_ticket(token, "SUP-1").await).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:toolgate:problem:task-token", "{body}");
    body["detail"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_widened_delegation_tokens_are_refused_each_with_a_clear_problem() {
    let tool = ToolServer::http().await;
    let sts = Sts::start().await;
    let (_, orchestrator) = new_key();
    let setup = |id, trusts, max_depth| Setup {
        id,
        tool: &tool,
        sts: &sts,
        orchestrator: &orchestrator,
        trusts,
        max_depth,
        extra: "",
        otlp: None,
    };
    let a = Agent::start(setup(AGENT_A, Vec::new(), 2));
    let b = Agent::start(setup(AGENT_B, vec![a.trust()], 2));
    let c = Agent::start(setup(AGENT_C, vec![a.trust(), b.trust()], 2));

    let root = task_token(&orchestrator, "T-1", AGENT_A, 600);
    let answer: Json = a
        .delegate(
            &root,
            json!({ "to": AGENT_B, "actions": ["ticket.read"], "scopes": ["tickets:read"] }),
        )
        .await
        .json()
        .await
        .unwrap();
    let ab = answer["token"].as_str().unwrap().to_string();
    let ab_claims = claims_of(&ab);
    // The genuine token: accepted.
    assert_eq!(b.read_ticket(&ab, "SUP-1").await.status(), 200);

    // Tampered to add an action: the signature no longer verifies.
    let mut wider = ab_claims.clone();
    wider["actions"] = json!(["ticket.read", "ticket.transition"]);
    let detail = refused(&b, &tampered(&ab, &wider)).await;
    assert_eq!(
        detail,
        "the task token has a signature that does not verify against the issuer's keys"
    );

    // Signed by a key A does not publish, in A's name.
    let (_, mallory) = new_key();
    let detail = refused(&b, &sign(&mallory, &ab_claims)).await;
    assert!(
        detail.starts_with("the task token is signed with key ")
            && detail.ends_with("which the issuer's JWKS does not hold"),
        "{detail}"
    );

    // From an issuer B does not trust.
    let mut foreign = ab_claims.clone();
    foreign["iss"] = json!("https://toolgate.mallory.test");
    let detail = refused(&b, &sign(&mallory, &foreign)).await;
    assert_eq!(
        detail,
        "the task token is from issuer \"https://toolgate.mallory.test\", which is not trusted"
    );

    // Expired (signed with A's real key, so only the expiry is wrong).
    let mut old = ab_claims.clone();
    old["iat"] = json!(now() - 3600);
    old["nbf"] = json!(now() - 3600);
    old["exp"] = json!(now() - 120);
    let detail = refused(&b, &sign(&a.delegation_key, &old)).await;
    assert!(detail.starts_with("the task token expired at "), "{detail}");

    // For B, presented by C: its audience is B.
    let detail = refused(&c, &ab).await;
    assert_eq!(detail, "the task token is not meant for this audience");

    // B hands on only what it holds: closing tickets is left out, and said so.
    let answer: Json = b
        .delegate(
            &ab,
            json!({ "to": AGENT_C, "actions": ["ticket.read", "ticket.transition"], "scopes": ["tickets:read", "tickets:admin"] }),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["actions"], json!(["ticket.read"]), "{answer}");
    assert_eq!(answer["scopes"], json!(["tickets:read"]));
    assert_eq!(
        answer["not_delegated"],
        json!(["ticket.transition", "tickets:admin"])
    );
    assert_eq!(answer["depth"], 2);
    let bc = answer["token"].as_str().unwrap().to_string();
    let bc_claims = claims_of(&bc);
    assert_eq!(bc_claims["parent"], ab.as_str());
    assert_eq!(
        bc_claims["act"],
        json!({ "sub": AGENT_B, "act": { "sub": AGENT_A, "act": { "sub": USER } } })
    );
    // A delegation of nothing B holds is refused before policy.
    let (status, body) = problem(
        b.delegate(
            &ab,
            json!({ "to": AGENT_C, "actions": ["ticket.transition"] }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["type"], "urn:toolgate:problem:delegation-scope");

    // The genuine second hop: C acts within it, its JWT names B, then A, then the user.
    assert_eq!(c.read_ticket(&bc, "SUP-1").await.status(), 200);
    let jwt = bearer(tool.received().last().unwrap());
    let verified = verify_independently(&c.jwks(), "jira.test", &[jwt]);
    assert_eq!(
        verified[0].1["act"],
        json!({ "sub": AGENT_B, "act": { "sub": AGENT_A, "act": { "sub": USER } } })
    );
    assert_eq!(verified[0].1["sub"], AGENT_C);
    let (status, body) = problem(c.close_ticket(&bc, "SUP-1").await).await;
    assert_eq!(status, 403);
    assert_eq!(body["type"], "urn:toolgate:problem:delegation-scope");

    // Signed with B's real key but wider than what A gave B: refused all the same.
    let mut widened = bc_claims.clone();
    widened["actions"] = json!(["ticket.read", "ticket.transition"]);
    let detail = refused(&c, &sign(&b.delegation_key, &widened)).await;
    assert_eq!(
        detail,
        format!("the delegation token widens its parent delegation: action \"ticket.transition\" was not delegated to {AGENT_B}")
    );
    let mut widened = bc_claims.clone();
    widened["scope"] = json!("tickets:read tickets:admin");
    let detail = refused(&c, &sign(&b.delegation_key, &widened)).await;
    assert!(
        detail.contains("scope \"tickets:admin\" was not delegated"),
        "{detail}"
    );
    // A second hop without its parent cannot be checked: refused.
    let mut orphan = bc_claims.clone();
    orphan.as_object_mut().unwrap().remove("parent");
    let detail = refused(&c, &sign(&b.delegation_key, &orphan)).await;
    assert!(detail.contains("must carry its `parent`"), "{detail}");
    // A parent that is not A's: refused.
    let mut false_parent = bc_claims.clone();
    false_parent["parent"] = json!(sign(&mallory, &ab_claims));
    let detail = refused(&c, &sign(&b.delegation_key, &false_parent)).await;
    assert!(
        detail.starts_with("the delegation token has a parent delegation that is signed with key"),
        "{detail}"
    );
    // Re-signed faithfully, the same claims are accepted: the refusals above were the edits.
    assert_eq!(
        c.read_ticket(&sign(&b.delegation_key, &bc_claims), "SUP-1")
            .await
            .status(),
        200
    );
    assert_eq!(issuer_of(AGENT_B), bc_claims["iss"]);

    // An agent cannot delegate to itself.
    let (status, body) = problem(
        b.delegate(&ab, json!({ "to": AGENT_B, "actions": ["ticket.read"] }))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["type"], "urn:toolgate:problem:delegation-request");
}
