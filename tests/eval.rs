//! `toolgate eval`: one request classified and decided offline, printed as JSON — the
//! action, attributes, the policy input document and the decision.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/config/toolgate.yaml"
);

/// Run `toolgate eval -c GOLDEN ARGS` with `stdin`; (exit code, parsed stdout, stderr).
fn eval(args: &[&str], stdin: &[u8]) -> (i32, Value, String) {
    let (code, json, _, stderr) = eval_with(GOLDEN, args, stdin);
    (code, json, stderr)
}

/// Run `toolgate eval -c CONFIG ARGS` with `stdin`; (exit code, parsed stdout, raw stdout,
/// stderr).
fn eval_with(config: &str, args: &[&str], stdin: &[u8]) -> (i32, Value, String, String) {
    let mut child = Command::new(support::binary())
        .args(["eval", "-c", config])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stdout, stderr)
}

#[test]
fn eval_prints_action_attributes_input_and_decision_for_a_body_rule() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("close.json");
    std::fs::write(&body, r#"{"transition":{"id":"31"}}"#).unwrap();
    let (code, out, err) = eval(
        &[
            "--method",
            "POST",
            "--url",
            "http://jira.example.com/rest/api/3/issue/SUP-7/transitions",
            "--header",
            "Content-Type: application/json",
            "--header",
            "Authorization: Bearer agent-own",
            "--body",
            body.to_str().unwrap(),
            "--task",
            "T-9",
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["tool"], "jira");
    assert_eq!(out["action"], "ticket.close");
    assert_eq!(out["attributes"], json!({"issue": "SUP-7"}));
    assert_eq!(out["decision"]["allow"], false);
    assert_eq!(out["decision"]["reason"], "closing a ticket needs a human");
    assert_eq!(out["forwarded"], false);
    let input = &out["input"];
    assert_eq!(input["task"]["id"], "T-9");
    assert_eq!(input["action"]["name"], "ticket.close");
    assert_eq!(input["request"]["body"]["transition"]["id"], "31");
    assert_eq!(
        input["request"]["path"],
        "/rest/api/3/issue/SUP-7/transitions"
    );
    assert!(
        input["request"]["headers"].get("authorization").is_none(),
        "credential headers never reach the input: {input}"
    );
}

#[test]
fn eval_reads_the_body_from_standard_input() {
    let (code, out, err) = eval(
        &[
            "--method",
            "POST",
            "--url",
            "http://payments.example.com/v1/payments",
            "--header",
            "content-type:application/x-www-form-urlencoded",
            "--body",
            "-",
        ],
        b"amount=40&currency=EUR",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["action"], "payment.create");
    assert_eq!(
        out["attributes"],
        json!({"amount": "40", "currency": "EUR"})
    );
    assert_eq!(out["decision"]["allow"], true);
    assert_eq!(out["forwarded"], true);
    assert_eq!(
        out["input"]["request"]["body"],
        json!({"amount": "40", "currency": "EUR"})
    );
}

#[test]
fn eval_reports_a_refusal_with_the_status_the_proxy_would_answer() {
    let (code, out, err) = eval(
        &[
            "--method",
            "GET",
            "--url",
            "http://jira.example.com/rest/api/3/issue/%2e%2e/admin",
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["refused"]["status"], 400);
    assert_eq!(
        out["refused"]["reason"],
        "path contains a '.' or '..' segment (raw or percent-encoded)"
    );
    assert_eq!(out["forwarded"], false);
}

#[test]
fn eval_shows_each_member_of_a_json_rpc_batch() {
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "a"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_customer", "arguments": {}}},
    ]);
    let (code, out, err) = eval(
        &[
            "--method",
            "POST",
            "--url",
            "http://crm.example.com/mcp",
            "--header",
            "content-type: application/json",
            "--body",
            "-",
        ],
        batch.to_string().as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out["action"], "crm.delete_customer",
        "the member that decides: {out}"
    );
    let members = out["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["action"], "crm.search");
    assert_eq!(members[0]["decision"]["allow"], true);
    assert_eq!(
        members[1]["decision"]["reason"],
        "deleting customers needs a human"
    );
    assert_eq!(members[1]["input"]["request"]["body"]["id"], 2);
}

#[test]
fn eval_refuses_a_malformed_header_with_exit_2() {
    let (code, _, err) = eval(
        &[
            "--method",
            "GET",
            "--url",
            "http://jira.example.com/",
            "--header",
            "no-colon",
        ],
        b"",
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("--header \"no-colon\" must be `Name: value`"),
        "{err}"
    );
}

const SECRET: &str = "jira-secret-never-printed-3b";
const MAPS_SECRET: &str = "maps-secret-never-printed-9f";

const CREDENTIAL_POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "within limits",
	"credential": {"name": "payments", "scopes": ["payments:write"], "ttl": "30s"}} if input.action.name == "payment.create"

decision := {"allow": true, "credential": {"name": "github", "scopes": ["repo:read"]}} if input.action.name == "repo.read"

decision := {"allow": true, "credential": {"name": "maps-key"}} if input.action.name == "map.read"

decision := {"allow": true, "credential": {"name": "nowhere"}} if input.action.name == "ticket.delete"

decision := true if input.action.name in {"ticket.read", "crm.lookup", "crm.orders"}
"#;

/// A configuration with one credential of each kind, in a directory of its own: the
/// signing key, the secrets and the agent's identity token (which must not be printed).
struct CredentialConfig {
    dir: tempfile::TempDir,
    signing_pem: String,
    agent_token: String,
}

impl CredentialConfig {
    fn new() -> CredentialConfig {
        use toolgate_policy::config::{generate_ed25519_pem, SigningKey};
        let dir = tempfile::tempdir().unwrap();
        let signing_pem = generate_ed25519_pem().unwrap();
        let issuer = SigningKey::from_pem(
            generate_ed25519_pem().unwrap().as_bytes(),
            jsonwebtoken::Algorithm::EdDSA,
        )
        .unwrap();
        let claims = json!({ "sub": "spiffe://test/ns/a/sa/agent", "exp": 4_102_444_800u64,
            "act": { "sub": "user:alice" } });
        let agent_token =
            jsonwebtoken::encode(issuer.header(), &claims, issuer.encoding_key()).unwrap();
        let config = r#"
agent: { id_file: agent.jwt }
tools:
  - name: payments
    hosts: [payments.example.com]
    actions:
      - { name: payment.create, match: { method: POST, path: /v1/payments } }
  - name: jira
    hosts: [jira.example.com]
    credential: jira-token
    actions:
      - { name: ticket.read, match: { method: GET, path: "/issue/{issue}" } }
      - { name: ticket.delete, match: { method: DELETE, path: "/issue/{issue}" } }
  - name: maps
    hosts: [maps.example.com]
    actions:
      - { name: map.read, match: { method: GET, path: /tiles } }
  - name: github
    hosts: [github.example.com]
    actions:
      - { name: repo.read, match: { method: GET, path: "/repos/{repo}" } }
  - name: crm
    hosts: [crm.example.com]
    protocol: mcp
    credential: payments
policy: { files: [policy.rego] }
credentials:
  payments: { kind: jwt, audience: payments.example.com, key_file: signing.pem, max_ttl: 60s }
  jira-token: { kind: secret, file: jira-secret, header: Authorization, format: "Bearer {}" }
  maps-key: { kind: secret, file: maps-secret, query: key }
  github: { kind: token_exchange, endpoint: https://sts.example.com/token, audience: github, scopes: [read] }
"#;
        for (name, text) in [
            ("toolgate.yaml", config),
            ("policy.rego", CREDENTIAL_POLICY),
            ("signing.pem", signing_pem.as_str()),
            ("jira-secret", SECRET),
            ("maps-secret", MAPS_SECRET),
            ("agent.jwt", agent_token.as_str()),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        CredentialConfig {
            dir,
            signing_pem,
            agent_token,
        }
    }

    /// `toolgate eval` on this configuration; its JSON, after checking that nothing secret
    /// is in the output.
    fn eval(&self, args: &[&str], stdin: &[u8]) -> Value {
        let config = self.dir.path().join("toolgate.yaml");
        let (code, out, raw, err) = eval_with(config.to_str().unwrap(), args, stdin);
        assert_eq!(code, 0, "{err}");
        let key_body: String = self
            .signing_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        for (what, value) in [
            ("the jira secret", SECRET),
            ("the maps secret", MAPS_SECRET),
            ("the signing key", key_body.as_str()),
            ("the agent's identity token", self.agent_token.as_str()),
        ] {
            assert!(!raw.contains(value), "{what} is in the output:\n{raw}");
        }
        // No signed token either: a JWT starts with base64url `{"` — `eyJ`.
        assert!(!raw.contains("eyJ"), "{raw}");
        out
    }
}

#[test]
fn eval_shows_the_claims_a_minted_jwt_would_carry_without_signing_one() {
    let c = CredentialConfig::new();
    let out = c.eval(
        &[
            "--method",
            "POST",
            "--url",
            "http://payments.example.com/v1/payments",
            "--task",
            "T-77",
        ],
        b"",
    );
    assert_eq!(out["decision"]["allow"], true, "{out}");
    let cred = &out["decision"]["credential"];
    assert_eq!(cred["name"], "payments");
    assert_eq!(cred["kind"], "jwt");
    assert_eq!(cred["header"], "authorization");
    assert_eq!(cred["jwt_header"]["alg"], "EdDSA");
    assert_eq!(cred["lifetime_seconds"], 30);
    let claims = &cred["claims"];
    assert_eq!(claims["iss"], "toolgate");
    assert_eq!(claims["sub"], "spiffe://test/ns/a/sa/agent");
    assert_eq!(claims["aud"], "payments.example.com");
    assert_eq!(claims["scope"], "payment.create payments:write");
    assert_eq!(claims["task"], "T-77");
    assert_eq!(claims["act"], json!({ "sub": "user:alice" }));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        30,
        "exp - iat is the policy's ttl"
    );
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(
        claims["jti"].is_null(),
        "every minted token gets its own jti"
    );
    assert_eq!(
        out["input"]["agent"]["claims"]["act"],
        json!({ "sub": "user:alice" }),
        "policy sees the identity token's claims, as in the proxy"
    );
}

#[test]
fn eval_shows_where_a_secret_goes_but_never_its_value() {
    let c = CredentialConfig::new();
    let out = c.eval(
        &[
            "--method",
            "GET",
            "--url",
            "http://jira.example.com/issue/SUP-1",
        ],
        b"",
    );
    assert_eq!(
        out["decision"]["credential"],
        json!({ "name": "jira-token", "kind": "secret", "header": "authorization" }),
        "the tool's default credential"
    );
    let out = c.eval(
        &[
            "--method",
            "GET",
            "--url",
            "http://maps.example.com/tiles?z=1",
        ],
        b"",
    );
    assert_eq!(
        out["decision"]["credential"],
        json!({ "name": "maps-key", "kind": "secret", "query": "key" })
    );
}

#[test]
fn eval_shows_the_audience_and_scopes_a_token_exchange_would_request() {
    let c = CredentialConfig::new();
    let out = c.eval(
        &[
            "--method",
            "GET",
            "--url",
            "http://github.example.com/repos/toolgate",
        ],
        b"",
    );
    let cred = &out["decision"]["credential"];
    assert_eq!(cred["name"], "github");
    assert_eq!(cred["kind"], "token_exchange");
    assert_eq!(cred["endpoint"], "https://sts.example.com/token");
    assert_eq!(cred["audience"], "github");
    assert_eq!(
        cred["scope"], "read repo:read",
        "the credential's scopes, then the decision's"
    );
    assert_eq!(
        cred["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
}

#[test]
fn eval_reports_an_unconfigured_credential_as_the_error_the_proxy_answers() {
    let c = CredentialConfig::new();
    let out = c.eval(
        &[
            "--method",
            "DELETE",
            "--url",
            "http://jira.example.com/issue/SUP-1",
        ],
        b"",
    );
    assert_eq!(out["decision"]["allow"], false, "{out}");
    assert_eq!(out["decision"]["effect"], "error");
    assert_eq!(out["decision"]["credential"]["name"], "nowhere");
    assert_eq!(
        out["decision"]["credential"]["error"],
        "the policy asked for credential \"nowhere\", which is not configured"
    );
    assert_eq!(out["forwarded"], false);
}

#[test]
fn eval_scopes_a_batchs_one_credential_to_every_members_action() {
    let c = CredentialConfig::new();
    let call = |id: u64, name: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name}});
    let batch = json!([call(1, "lookup"), call(2, "orders")]);
    let out = c.eval(
        &[
            "--method",
            "POST",
            "--url",
            "http://crm.example.com/mcp",
            "--header",
            "content-type: application/json",
            "--body",
            "-",
        ],
        batch.to_string().as_bytes(),
    );
    assert_eq!(out["forwarded"], true, "{out}");
    let members = out["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for m in members {
        let cred = &m["decision"]["credential"];
        assert_eq!(cred["name"], "payments", "{m}");
        assert_eq!(cred["claims"]["scope"], "crm.lookup crm.orders");
    }
}
