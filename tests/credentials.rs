//! Identity and ephemeral credentials end to end: the real toolgate binary between a real
//! client and real servers — an echoing tool, a local RFC 8693 STS — with minted JWTs
//! verified by an independent implementation (PyJWT) against the admin JWKS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/otlp.rs"]
mod otlp;
mod support;

pub(crate) use support::verify_independently;

#[path = "credentials/servers.rs"]
mod servers;

#[path = "credentials/exchange.rs"]
mod exchange;
#[path = "credentials/identity.rs"]
mod identity;
#[path = "credentials/minting.rs"]
mod minting;
#[path = "credentials/redaction.rs"]
mod redaction;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};
use toolgate_policy::config::{generate_ed25519_pem, SigningKey};

use servers::{Server, Sts};
use support::Toolgate;

pub(crate) const JIRA_SECRET: &str = "jira-secret-4c1d";
pub(crate) const MAPS_SECRET: &str = "maps/secret+9e";
pub(crate) const LEGACY_SECRET: &str = "legacy-pass-77";
pub(crate) const STS_CLIENT_SECRET: &str = "sts-client-secret-5b";
pub(crate) const AGENT_ID: &str = "spiffe://test.example/ns/agents/sa/triage";
pub(crate) const ORCHESTRATOR: &str = "https://orchestrator.test";

const POLICY: &str = r#"
package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {
	"allow": true,
	"reason": "payments are allowed",
	"credential": {"name": "payments", "scopes": ["payments:write"], "ttl": "30s"},
} if input.action.name == "payment.create"

decision := {"allow": true, "credential": {"name": "github", "scopes": ["repo:read"]}} if {
	input.action.name == "repo.read"
}

decision := {"allow": true, "credential": {"name": "github", "scopes": ["repo:short"]}} if {
	input.action.name == "repo.status"
}

decision := {"allow": true, "reason": concat("", ["analyst working for ", input.task.claims.on_behalf_of])} if {
	input.action.name == "report.read"
	input.task.claims.role == "analyst"
}

decision := {"allow": false, "reason": "only analysts may read reports"} if {
	input.action.name == "report.read"
	not input.task.claims.role == "analyst"
}

decision := {"allow": true, "reason": "plain secret"} if input.action.name in {"ticket.read", "map.read", "legacy.read"}
"#;

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A new Ed25519 key (a token issuer of the test: SPIRE, the orchestrator).
pub(crate) fn issuer_key() -> SigningKey {
    SigningKey::from_pem(
        generate_ed25519_pem().unwrap().as_bytes(),
        jsonwebtoken::Algorithm::EdDSA,
    )
    .unwrap()
}

/// `{"keys": [...]}` for `keys`.
pub(crate) fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>() }).to_string()
}

/// A token with `claims`, signed by `key`.
pub(crate) fn sign(key: &SigningKey, claims: Json) -> String {
    jsonwebtoken::encode(key.header(), &claims, key.encoding_key()).unwrap()
}

/// The agent's JWT-SVID for `sub`, valid for an hour.
pub(crate) fn svid(spire: &SigningKey, sub: &str) -> String {
    sign(
        spire,
        json!({ "sub": sub, "aud": ["sts.test"], "iat": now(), "exp": now() + 3600 }),
    )
}

/// `toolgate keys init` with `args`; its standard output.
pub(crate) fn keys_init(args: &[&str]) -> String {
    let out = Command::new(support::binary())
        .args(["keys", "init"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Knobs for one [`World`].
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub max_ttl: &'static str,
    /// An OTLP/HTTP receiver to export spans to (quickly), if any.
    pub otlp: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_ttl: "60s",
            otlp: None,
        }
    }
}

/// toolgate with every credential kind configured, its tool, its STS and the token issuers.
pub(crate) struct World {
    pub tg: Toolgate,
    pub tool: Server,
    pub sts: Sts,
    pub spire: SigningKey,
    pub orchestrator: SigningKey,
    pub svid: String,
    /// The private signing key toolgate was started with (PEM).
    pub signing_pem: String,
}

impl World {
    pub async fn start(options: Options) -> World {
        let tool = servers::echo_tool().await;
        let sts = Sts::start().await;
        let (spire, orchestrator) = (issuer_key(), issuer_key());
        let svid = svid(&spire, AGENT_ID);
        let signing_pem = keys_init(&[]);
        let upstream = tool.url();
        let config = format!(
            r#"
agent: {{ id_file: identity/svid.jwt, jwks_file: identity/spire-bundle.json }}
tools:
  - name: payments
    hosts: [payments.test]
    upstream: {upstream}
    actions:
      - {{ name: payment.create, match: {{ method: POST, path: /v1/payments }} }}
  - name: github
    hosts: [github.test]
    upstream: {upstream}
    credential: github
    actions:
      - {{ name: repo.read, match: {{ method: GET, path: "/repos/{{repo}}" }} }}
      - {{ name: repo.status, match: {{ method: GET, path: "/repos/{{repo}}/status" }} }}
  - name: reports
    hosts: [reports.test]
    upstream: {upstream}
    actions:
      - {{ name: report.read, match: {{ method: GET, path: "/reports/{{id}}" }} }}
  - name: jira
    hosts: [jira.test]
    upstream: {upstream}
    credential: jira-token
    actions:
      - {{ name: ticket.read, match: {{ method: GET, path: "/issue/{{issue}}" }}, attributes: {{ issue: "path:issue" }} }}
  - name: maps
    hosts: [maps.test]
    upstream: {upstream}
    credential: maps-key
    actions:
      - {{ name: map.read, match: {{ method: GET, path: /tiles }} }}
  - name: legacy
    hosts: [legacy.test]
    upstream: {upstream}
    credential: legacy-basic
    actions:
      - {{ name: legacy.read, match: {{ method: GET, path: /status }} }}
policy: {{ files: [policy.rego] }}
credentials:
  payments: {{ kind: jwt, audience: payments.test, key_file: keys/signing.pem, issuer: toolgate-test, max_ttl: {max_ttl} }}
  github: {{ kind: token_exchange, endpoint: "{sts}", audience: github, scopes: [read], client_id: toolgate, client_secret_file: secrets/sts-client }}
  jira-token: {{ kind: secret, file: secrets/jira, header: x-api-token }}
  maps-key: {{ kind: secret, file: secrets/maps, query: key }}
  legacy-basic: {{ kind: secret, file: secrets/legacy, format: basic, username: svc }}
task_tokens:
  issuers:
    - {{ issuer: "{ORCHESTRATOR}", jwks_file: identity/orchestrator.json, audience: toolgate }}
limits: {{ connect_timeout: 2s, upstream_timeout: 5s, shutdown_timeout: 1s }}
admin: {{ token_file: operator-token }}
{telemetry}
"#,
            max_ttl = options.max_ttl,
            sts = sts.endpoint(),
            telemetry = options
                .otlp
                .as_ref()
                .map(|e| format!("telemetry: {{ otlp: {{ endpoint: \"{e}\", protocol: http }} }}"))
                .unwrap_or_default(),
        );
        // Export soon after each action, so tests need not wait for the 5 s default.
        let env: &[(&str, &str)] = match options.otlp {
            Some(_) => &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
            None => &[],
        };
        let tg = Toolgate::start_with_env(
            &config,
            &[
                ("policy.rego", POLICY),
                ("identity/svid.jwt", &format!("{svid}\n")),
                ("identity/spire-bundle.json", &jwks(&[&spire])),
                ("identity/orchestrator.json", &jwks(&[&orchestrator])),
                ("keys/signing.pem", &signing_pem),
                ("secrets/jira", &format!("{JIRA_SECRET}\n")),
                ("secrets/maps", MAPS_SECRET),
                ("secrets/legacy", LEGACY_SECRET),
                ("secrets/sts-client", STS_CLIENT_SECRET),
                support::OPERATOR_TOKEN_FILE,
            ],
            env,
        );
        World {
            tg,
            tool,
            sts,
            spire,
            orchestrator,
            svid,
            signing_pem,
        }
    }

    /// A task token from the orchestrator with `claims` on top of valid defaults.
    pub fn task_token(&self, task: &str, extra: Json) -> String {
        let mut claims = json!({
            "iss": ORCHESTRATOR, "aud": "toolgate", "task": task,
            "iat": now(), "exp": now() + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        sign(&self.orchestrator, claims)
    }

    /// The admin JWKS document.
    pub fn admin_jwks(&self) -> Json {
        let (status, body) = support::http_get(self.tg.admin, "/.well-known/jwks.json").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The decision-log lines written so far.
    pub fn decisions(&self) -> Vec<Json> {
        std::fs::read_to_string(self.tg.dir.path().join("stdout.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait (up to 20 s) until `done` holds for the decision log.
    pub fn wait_for_decision(&self, done: impl Fn(&[Json]) -> bool) -> Vec<Json> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = self.decisions();
            if done(&lines) || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (up to 20 s) until toolgate's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.tg.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Replace `path` in toolgate's directory atomically (as a Kubernetes volume update does).
    pub fn replace_file(&self, path: &str, contents: &str) {
        let full = self.tg.dir.path().join(path);
        let tmp = full.with_extension("tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &full).unwrap();
    }
}
