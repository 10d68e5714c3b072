//! `toolgate revoke` by socket and by token, and what `toolgate check` refuses.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{self, binary, ToolServer, OPERATOR_TOKEN};
use crate::{read_ticket, start, start_with_socket, POLICY, TOKEN_CONFIG};

fn revoke_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(["revoke", "-c"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn toolgate_revoke_reaches_the_operator_api_by_socket_and_by_token() {
    let tool = ToolServer::http().await;
    // Through the socket (no token configured).
    let tg = start_with_socket(&tool, "");
    let config = tg.dir.path().join("toolgate.yaml");
    let (code, out, err) = revoke_cli(&config, &["--task", "T-1", "--ttl", "1h"]);
    assert_eq!(code, 0, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["revoked"]["kind"], "task");
    assert_eq!(read_ticket(&tg, "T-1").await.0, 403);
    let (code, out, _) = revoke_cli(&config, &["--list"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["revocations"][0]["id"], "T-1");
    // Refused by the API: exit 1, with the reason.
    let (code, out, err) = revoke_cli(&config, &["--jti", "j", "--ttl", "1000000000000y"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("400 invalid operator request"), "{err}");
    drop(tg);

    // Through the admin listener with the bearer token.
    let tg = start(&tool, TOKEN_CONFIG);
    let config = tg.dir.path().join("toolgate.yaml");
    let (code, out, err) = revoke_cli(&config, &["--agent", "spiffe://test/ns/a/sa/agent"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(read_ticket(&tg, "T-9").await.0, 403);
    drop(tg);

    // Usage and configuration errors: exit 2.
    let tg = start(&tool, "");
    let config = tg.dir.path().join("toolgate.yaml");
    let (code, _, err) = revoke_cli(&config, &["--task", "T-1"]);
    assert_eq!(code, 2);
    assert!(err.contains("the operator API is off"), "{err}");
    let (code, _, _) = revoke_cli(&config, &["--task", "T-1", "--agent", "a"]);
    assert_eq!(code, 2);
    let (code, _, _) = revoke_cli(&config, &[]);
    assert_eq!(code, 2);
    let (code, _, err) = revoke_cli(&tg.dir.path().join("missing.yaml"), &["--list"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(read_ticket(&tg, "T-1").await.0, 200);
}

fn check(dir: &Path, extra: &str, listen: &str) -> (i32, String) {
    let yaml = format!(
        "listen: {{ proxy: \"127.0.0.1:1\", admin: \"127.0.0.1:2\"{listen} }}\nagent: {{ id: a }}\npolicy: {{ files: [policy/*.rego] }}\n{extra}\n"
    );
    support::write(dir, "toolgate.yaml", &yaml);
    support::write(dir, "policy/main.rego", POLICY);
    let out = Command::new(binary())
        .args(["check", "-c"])
        .arg(dir.join("toolgate.yaml"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_refuses_guessable_tokens_and_sockets_other_users_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let token = |t: &str| support::write(dir.path(), "operator-token", t);
    let admin = "admin: { token_file: operator-token }";

    token("operator-token-1234567890");
    let (code, text) = check(dir.path(), admin, "");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("admin.token_file") && text.contains("fewer than 32"),
        "{text}"
    );
    assert!(
        !text.contains("operator-token-1234567890"),
        "the token is echoed: {text}"
    );
    token("");
    let (code, text) = check(dir.path(), admin, "");
    assert_eq!(code, 2);
    assert!(text.contains("is empty"), "{text}");
    token(&"ab".repeat(20));
    let (code, text) = check(dir.path(), admin, "");
    assert_eq!(code, 2);
    assert!(text.contains("trivially guessable"), "{text}");

    // A socket in a shared temporary directory (world-writable, sticky), or in none.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, text) = check(dir.path(), "", ", operator: \"unix:shared/op.sock\"");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("every local user can write"), "{text}");
    let (code, text) = check(dir.path(), "", ", operator: \"unix:missing/op.sock\"");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("does not exist"), "{text}");

    // Positive controls: a good token, a private socket directory.
    token(OPERATOR_TOKEN);
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, text) = check(dir.path(), admin, ", operator: \"unix:private/op.sock\"");
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("operator API is off"), "{text}");
    // Off is allowed, and said.
    let (code, text) = check(dir.path(), "", "");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("note: the operator API is off"), "{text}");
}
