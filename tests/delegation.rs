//! Delegation and the end of a task, through real binaries: two (or three) toolgate processes
//! serving agents A, B (and C), a real tool, a local RFC 8693 STS with an RFC 7009
//! revocation endpoint, and the JWTs verified by an independent implementation (PyJWT).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

pub(crate) use support::verify_independently;

#[allow(dead_code)]
#[path = "credentials/servers.rs"]
mod servers;

#[path = "delegation/forged.rs"]
mod forged;
#[path = "delegation/lifecycle.rs"]
mod lifecycle;
#[path = "support/otlp.rs"]
mod otlp;
#[path = "delegation/properties.rs"]
mod properties;
#[path = "delegation/trace.rs"]
mod trace;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};
use toolgate_policy::config::{generate_ed25519_pem, SigningKey};

use servers::Sts;
use support::{ToolServer, Toolgate};

pub(crate) const AGENT_A: &str = "spiffe://test.example/ns/agents/sa/agent-a";
pub(crate) const AGENT_B: &str = "spiffe://test.example/ns/agents/sa/agent-b";
pub(crate) const AGENT_C: &str = "spiffe://test.example/ns/agents/sa/agent-c";
pub(crate) const ORCHESTRATOR: &str = "https://orchestrator.test";
pub(crate) const USER: &str = "user:alice";
pub(crate) const STS_CLIENT_SECRET: &str = "sts-client-secret-5b";
pub(crate) const INTROSPECTION_SECRET: &str = "3c9e1f7a5b2d8c4e6f0a1b3d5e7f9a2c4e6b8d0f";

/// Every agent's policy: tickets may be read and closed, repositories read; a task may be
/// handed on at most `data.max_depth` times; a delegated read says who handed it on.
pub(crate) const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {
	"allow": true,
	"reason": sprintf("reading tickets, handed on by %s at depth %d", [input.task.delegation.agents[0], input.task.delegation.depth]),
	"credential": {"name": "jira-jwt", "scopes": ["tickets:read", "tickets:admin"]},
} if {
	input.action.name == "ticket.read"
	input.task.delegation
}

decision := {"allow": true, "reason": "reading tickets", "credential": {"name": "jira-jwt", "scopes": ["tickets:read"]}} if {
	input.action.name == "ticket.read"
	not input.task.delegation
}

decision := {"allow": true, "reason": "closing tickets"} if input.action.name == "ticket.transition"

decision := {"allow": true, "reason": "reading repositories"} if input.action.name == "repo.read"

decision := {"allow": true, "reason": sprintf("handing %v on to %s", [input.action.attributes.actions, input.action.attributes.to])} if {
	input.action.name == "task.delegate"
	input.action.attributes.depth <= data.max_depth
}

decision := {"allow": false, "reason": sprintf("a task is handed on at most %d times", [data.max_depth])} if {
	input.action.name == "task.delegate"
	input.action.attributes.depth > data.max_depth
}
"#;

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A new Ed25519 key as PKCS#8 PEM, and parsed.
pub(crate) fn new_key() -> (String, SigningKey) {
    let pem = generate_ed25519_pem().unwrap();
    let key = SigningKey::from_pem(pem.as_bytes(), jsonwebtoken::Algorithm::EdDSA).unwrap();
    (pem, key)
}

/// `{"keys": [...]}` for `keys`.
pub(crate) fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>() }).to_string()
}

/// A token with `claims`, signed by `key`.
pub(crate) fn sign(key: &SigningKey, claims: &Json) -> String {
    jsonwebtoken::encode(key.header(), claims, key.encoding_key()).unwrap()
}

/// The issuer name of agent `id`'s toolgate.
pub(crate) fn issuer_of(id: &str) -> String {
    format!("https://toolgate.{}.test", id.rsplit('/').next().unwrap())
}

/// One agent and its toolgate.
pub(crate) struct Agent {
    pub id: &'static str,
    pub tg: Toolgate,
    /// The toolgate's delegation key (PEM), which a test may forge with.
    pub delegation_key: SigningKey,
}

/// What an agent's toolgate is started with.
pub(crate) struct Setup<'a> {
    pub id: &'static str,
    pub tool: &'a ToolServer,
    pub sts: &'a Sts,
    pub orchestrator: &'a SigningKey,
    /// Other toolgates whose delegations this one accepts: (issuer, JWKS document).
    pub trusts: Vec<(String, String)>,
    pub max_depth: u64,
    /// Extra configuration (e.g. `state: { dir: state }`).
    pub extra: &'a str,
    /// An OTLP/HTTP endpoint to export spans to, quickly.
    pub otlp: Option<String>,
}

impl Agent {
    pub fn start(s: Setup<'_>) -> Agent {
        let (delegation_pem, delegation_key) = new_key();
        let (signing_pem, _) = new_key();
        let (_, spire) = new_key();
        let svid = sign(
            &spire,
            &json!({ "sub": s.id, "aud": ["sts.test"], "iat": now(), "exp": now() + 3600 }),
        );
        let mut issuers = vec![format!(
            "    - {{ issuer: \"{ORCHESTRATOR}\", jwks_file: identity/orchestrator.json, audience: \"{}\" }}",
            s.id
        )];
        let mut files: Vec<(String, String)> = vec![
            ("policy.rego".into(), POLICY.into()),
            ("data.yaml".into(), format!("max_depth: {}\n", s.max_depth)),
            ("identity/svid.jwt".into(), svid),
            ("identity/orchestrator.json".into(), jwks(&[s.orchestrator])),
            ("keys/delegation.pem".into(), delegation_pem),
            ("keys/signing.pem".into(), signing_pem),
            ("secrets/sts-client".into(), STS_CLIENT_SECRET.into()),
            ("secrets/introspection".into(), INTROSPECTION_SECRET.into()),
            (
                support::OPERATOR_TOKEN_FILE.0.into(),
                support::OPERATOR_TOKEN_FILE.1.into(),
            ),
        ];
        for (i, (issuer, doc)) in s.trusts.iter().enumerate() {
            issuers.push(format!(
                "    - {{ issuer: \"{issuer}\", jwks_file: identity/peer-{i}.json, audience: \"{}\" }}",
                s.id
            ));
            files.push((format!("identity/peer-{i}.json"), doc.clone()));
        }
        let config = format!(
            r#"
agent: {{ id: "{id}", id_file: identity/svid.jwt }}
tools:
  - name: jira
    hosts: [jira.test]
    upstream: {tool}
    credential: jira-jwt
    actions:
      - {{ name: ticket.read, match: {{ method: GET, path: "/issue/{{issue}}" }}, attributes: {{ issue: "path:issue" }} }}
      - {{ name: ticket.transition, match: {{ method: POST, path: "/issue/{{issue}}/transitions" }}, attributes: {{ issue: "path:issue" }} }}
  - name: github
    hosts: [github.test]
    upstream: {tool}
    credential: github
    actions:
      - {{ name: repo.read, match: {{ method: GET, path: "/repos/{{repo}}" }} }}
policy: {{ files: [policy.rego], data: [data.yaml] }}
credentials:
  jira-jwt: {{ kind: jwt, audience: jira.test, key_file: keys/signing.pem, issuer: "{issuer}/credentials" }}
  github: {{ kind: token_exchange, endpoint: "{sts}/token", revocation_endpoint: "{sts}/revoke", audience: github, client_id: toolgate, client_secret_file: secrets/sts-client }}
delegation: {{ key_file: keys/delegation.pem, issuer: "{issuer}", max_ttl: 30m }}
task_tokens:
  issuers:
{issuers}
introspection: {{ clients: [{{ id: jira-tool, secret_file: secrets/introspection }}] }}
admin: {{ token_file: operator-token }}
limits: {{ connect_timeout: 2s, upstream_timeout: 5s, shutdown_timeout: 1s }}
{telemetry}
{extra}
"#,
            id = s.id,
            tool = s.tool.url(),
            sts = s.sts.server.url(),
            issuer = issuer_of(s.id),
            issuers = issuers.join("\n"),
            extra = s.extra,
            telemetry = s
                .otlp
                .as_ref()
                .map(|e| format!("telemetry: {{ otlp: {{ endpoint: \"{e}\", protocol: http }} }}"))
                .unwrap_or_default(),
        );
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // Export soon after each action, so tests need not wait for the 5 s default.
        let env: &[(&str, &str)] = match s.otlp {
            Some(_) => &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
            None => &[],
        };
        let tg = Toolgate::start_with_env(&config, &refs, env);
        Agent {
            id: s.id,
            tg,
            delegation_key,
        }
    }

    /// The admin JWKS document.
    pub fn jwks(&self) -> Json {
        let (status, body) = support::http_get(self.tg.admin, "/.well-known/jwks.json").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `(issuer, JWKS)` for another toolgate to trust this one's delegations.
    pub fn trust(&self) -> (String, String) {
        (issuer_of(self.id), self.jwks().to_string())
    }

    /// The agent asks its toolgate to hand `task_token`'s task on with `body`.
    pub async fn delegate(&self, task_token: &str, body: Json) -> reqwest::Response {
        self.tg
            .forward_client()
            .post("http://toolgate.internal/delegate")
            .header("x-toolgate-task-token", task_token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The agent reads ticket `issue` under `task_token`.
    pub async fn read_ticket(&self, task_token: &str, issue: &str) -> reqwest::Response {
        self.tg
            .forward_client()
            .get(format!("http://jira.test/issue/{issue}"))
            .header("x-toolgate-task-token", task_token)
            .send()
            .await
            .unwrap()
    }

    /// The agent closes ticket `issue` under `task_token`.
    pub async fn close_ticket(&self, task_token: &str, issue: &str) -> reqwest::Response {
        self.tg
            .forward_client()
            .post(format!("http://jira.test/issue/{issue}/transitions"))
            .header("x-toolgate-task-token", task_token)
            .header("content-type", "application/json")
            .body(r#"{"transition":{"id":"31"}}"#)
            .send()
            .await
            .unwrap()
    }

    /// The agent reads repository `repo` under `task_token`.
    pub async fn read_repo(&self, task_token: &str, repo: &str) -> reqwest::Response {
        self.tg
            .forward_client()
            .get(format!("http://github.test/repos/{repo}"))
            .header("x-toolgate-task-token", task_token)
            .send()
            .await
            .unwrap()
    }

    /// The decision-log lines written so far.
    pub fn decisions(&self) -> Vec<Json> {
        self.tg
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait (up to 10 s) for a decision-log line that `want` accepts.
    pub fn decision(&self, want: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.decisions().into_iter().find(|l| want(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no such decision in {:#?}",
                self.decisions()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `POST /v1/introspect` with `token`, as the introspection client `jira-tool`.
    pub fn introspect(&self, token: &str) -> Json {
        let answer = self.introspect_as(Some(("jira-tool", INTROSPECTION_SECRET)), token);
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    }

    /// `POST /v1/introspect` with `token`, authenticated as `client` (id, secret) if any.
    pub fn introspect_as(&self, client: Option<(&str, &str)>, token: &str) -> support::Answer {
        use base64::Engine as _;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        let auth = client.map(|(id, secret)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
            )
        });
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        support::request(
            self.tg.admin,
            "POST",
            "/v1/introspect",
            &headers,
            body.as_bytes(),
        )
    }
}

/// An orchestrator's task token for `task`, for agent `aud`, signed by `key`.
pub(crate) fn task_token(key: &SigningKey, task: &str, aud: &str, lifetime: u64) -> String {
    sign(
        key,
        &json!({
            "iss": ORCHESTRATOR, "sub": USER, "aud": aud, "task": task,
            "iat": now(), "exp": now() + lifetime,
        }),
    )
}

/// The claims of `token`, read without verifying it.
pub(crate) fn claims_of(token: &str) -> Json {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// The bearer token a tool request carried.
pub(crate) fn bearer(received: &support::Received) -> String {
    received.headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string()
}

/// Agents A and B: B trusts A's delegations; the orchestrator starts tasks on A.
pub(crate) struct Pair {
    pub tool: ToolServer,
    pub sts: Sts,
    pub orchestrator: SigningKey,
    pub a: Agent,
    pub b: Agent,
}

impl Pair {
    pub async fn start(b_extra: &str) -> Pair {
        let tool = ToolServer::http().await;
        let sts = Sts::start().await;
        let (_, orchestrator) = new_key();
        let a = Agent::start(Setup {
            id: AGENT_A,
            tool: &tool,
            sts: &sts,
            orchestrator: &orchestrator,
            trusts: Vec::new(),
            max_depth: 1,
            extra: "",
            otlp: None,
        });
        let b = Agent::start(Setup {
            id: AGENT_B,
            tool: &tool,
            sts: &sts,
            orchestrator: &orchestrator,
            trusts: vec![a.trust()],
            max_depth: 1,
            extra: b_extra,
            otlp: None,
        });
        Pair {
            tool,
            sts,
            orchestrator,
            a,
            b,
        }
    }
}
