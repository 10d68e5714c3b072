//! The approval page in a real browser: Debian's Chromium, headless, driven by Playwright for
//! Python (`page.py`; `scripts/test.sh` installs both). The page lists the pending approval
//! with the request and the task's chain, a click approves it, and the agent's identical
//! retry then goes out.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{self, ToolServer, OPERATOR_TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn the_page_lists_a_pending_approval_and_a_click_approves_it() {
    let tool = ToolServer::http().await;
    let tg = crate::start(&tool, None, None);
    // An earlier action in the task, for the chain the page shows.
    assert_eq!(crate::pay(&tg, "T-page", 20, "EUR").await.0, 200);
    let (status, held) = crate::pay(&tg, "T-page", 800, "EUR").await;
    assert_eq!(status, 403, "{held}");
    let id = held["approval_id"].as_str().unwrap().to_string();

    // The page itself is open and holds no data; its policy allows only itself.
    let page = support::request(tg.admin, "GET", "/approvals", &[], b"");
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains(&id) && !page.body.contains("payment"),
        "the page holds data"
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "an external asset"
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/approvals/page.py");
    let url = held["approve_url"].as_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(url)
            .arg(OPERATOR_TOKEN)
            .arg(&id)
            .output()
            .expect("python3 with playwright and /usr/bin/chromium are required (scripts/test.sh installs them)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the browser run failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen["before_token"], 0,
        "listed before the token was given: {seen}"
    );
    assert_eq!(seen["stored_token"], true);
    assert_eq!(seen["cookies"], json!([]), "the page must not use cookies");
    assert_eq!(
        seen["targeted"], true,
        "the approve_url's #id marks the card"
    );
    assert_eq!(seen["action"], "payment.create");
    assert_eq!(seen["status"], "pending");
    assert_eq!(
        seen["request"],
        "POST http://payments.test/v1/payments?amount=800&currency=EUR"
    );
    assert_eq!(
        seen["attributes"],
        json!({"amount": "800", "currency": "EUR"})
    );
    assert!(
        seen["body"]
            .as_str()
            .unwrap()
            .contains(r#"{"memo":"invoice 7"}"#),
        "{seen}"
    );
    let chain = seen["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2, "{seen}");
    assert_eq!(chain[0][1], "payment.create");
    assert_eq!(chain[0][3], "response 200");
    assert_eq!(chain[1][2], "deny");
    assert_eq!(seen["message"], "Approved by Pat Operator.");
    assert_eq!(seen["problems"], json!([]), "console errors (CSP?): {seen}");

    // The agent's identical retry now goes out, once.
    let (status, body) = crate::pay(&tg, "T-page", 800, "EUR").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(tool.received().len(), 2);
    let shown = support::operator_json(
        tg.admin,
        &format!("/v1/approvals/{}", held["approval_id"].as_str().unwrap()),
    );
    assert_eq!(shown["decided_by"], "Pat Operator");
    assert_eq!(shown["comment"], "checked on the page");
    assert_eq!(shown["status"], "consumed");
}
