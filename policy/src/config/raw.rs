//! The configuration file as written: serde structs that mirror DESIGN.md §4.
//!
//! Unknown keys are collected by `serde_ignored` in `config::parse` rather than rejected by
//! `deny_unknown_fields`, so that every unknown key in a file is reported at once.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    pub workers: Option<usize>,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub tools: Vec<RawTool>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    pub policy: Option<RawPolicy>,
    #[serde(default)]
    pub credentials: BTreeMap<String, RawCredential>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub chain: RawChain,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub limits: RawLimits,
    pub task_tokens: Option<RawTaskTokens>,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub approvals: RawApprovals,
    #[serde(default)]
    pub mcp: super::mcp::RawMcp,
    /// `delegation`: how this toolgate signs delegation tokens (config/delegation.rs).
    pub delegation: Option<RawDelegation>,
    /// `introspection`: who may ask whether a credential is still alive.
    #[serde(default)]
    pub introspection: RawIntrospection,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawListen {
    pub proxy: Option<String>,
    pub transparent: Option<String>,
    pub admin: Option<String>,
    /// `unix:/path`: the operator listener (config/operator.rs).
    pub operator: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAgent {
    pub id: Option<String>,
    pub id_env: Option<String>,
    /// A JWT-SVID or projected service-account token; its `sub` is the id unless `id` is set.
    pub id_file: Option<String>,
    /// Public keys that must verify the `id_file` token.
    pub jwks_file: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawTool {
    pub name: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub upstream: Option<String>,
    pub credential: Option<String>,
    /// `false`: CONNECT to this tool is decided by host alone and spliced, not intercepted.
    pub intercept: Option<bool>,
    /// `mcp`: classify as JSON-RPC (DESIGN.md §4); default: by the actions below.
    pub protocol: Option<String>,
    /// Labels every action of this tool sets on its task and agent.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `allow`: method- and URL-override headers and parameters reach this tool; default
    /// `refuse`.
    pub overrides: Option<String>,
    /// An MCP tool's lock file of pinned tool definitions (config/mcp.rs).
    pub lock: Option<String>,
    #[serde(default)]
    pub actions: Vec<RawAction>,
}

#[derive(Debug, Deserialize)]
pub struct RawAction {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Labels this action sets on its task and agent when it is forwarded.
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMatch {
    pub method: Option<String>,
    pub path: Option<String>,
    /// JSON pointer → expected value (a scalar, or `{in: [...]}`); checked in `config::matching`.
    pub body: Option<BTreeMap<String, serde_json::Value>>,
    /// The protocol the action may switch the connection to (`websocket`).
    pub upgrade: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawRoute {
    pub prefix: String,
    pub tool: String,
}

#[derive(Debug, Deserialize)]
pub struct RawPolicy {
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub data: Vec<String>,
    pub query: Option<String>,
    pub mode: Option<String>,
    /// A candidate policy evaluated beside this one, never enforced.
    pub shadow: Option<RawShadow>,
}

/// `policy.shadow`: the candidate's modules and data (its query defaults to the live one's).
#[derive(Debug, Default, Deserialize)]
pub struct RawShadow {
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub data: Vec<String>,
    pub query: Option<String>,
}

/// Every key any credential kind takes; `config::credentials` rejects the ones a kind does not.
#[derive(Debug, Default, Deserialize)]
pub struct RawCredential {
    pub kind: String,
    pub file: Option<String>,
    pub env: Option<String>,
    pub header: Option<String>,
    pub format: Option<String>,
    pub query: Option<String>,
    pub username: Option<String>,
    pub audience: Option<String>,
    pub key_file: Option<String>,
    pub issuer: Option<String>,
    pub max_ttl: Option<String>,
    pub algorithm: Option<String>,
    pub endpoint: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub subject_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<String>,
    pub timeout: Option<String>,
    /// The STS's RFC 7009 revocation endpoint (`token_exchange`).
    pub revocation_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTaskTokens {
    #[serde(default)]
    pub issuers: Vec<RawTokenIssuer>,
    pub leeway: Option<String>,
    pub task_claim: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawTokenIssuer {
    pub issuer: String,
    pub jwks_file: String,
    pub audience: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawChain {
    pub task_header: Option<String>,
    pub max_actions: Option<usize>,
    pub max_tasks: Option<usize>,
    pub idle_ttl: Option<String>,
    /// How long a label set on the agent lasts.
    pub agent_label_ttl: Option<String>,
    /// Refuse requests without a verified task token (`task-required`).
    pub require_task_token: Option<bool>,
    /// How long an ended task stays ended, with its chain kept for audit.
    pub ended_retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTelemetry {
    pub decision_log: Option<RawDecisionLog>,
    pub otlp: Option<RawOtlp>,
}

/// `telemetry.decision_log`: `stdout`, a file path or `off`, or `{ sink, input }`.
#[derive(Debug)]
pub enum RawDecisionLog {
    Sink(String),
    Detailed(RawDecisionLogFields),
}

/// `telemetry.decision_log` written as a mapping.
#[derive(Debug, Default, Deserialize)]
pub struct RawDecisionLogFields {
    pub sink: Option<String>,
    /// Each line also carries the policy input and the live decision (for `toolgate replay`).
    pub input: Option<bool>,
}

impl<'de> Deserialize<'de> for RawDecisionLog {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = RawDecisionLog;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("stdout, off, a file path, or a mapping with `sink` and `input`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDecisionLog, E> {
                Ok(RawDecisionLog::Sink(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawDecisionLog, A::Error> {
                // Through the map access as given, so unknown keys are still collected.
                RawDecisionLogFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawDecisionLog::Detailed)
            }
        }
        d.deserialize_any(Either)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RawOtlp {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub token_file: Option<String>,
    pub revocation_ttl: Option<String>,
    pub max_revocation_ttl: Option<String>,
}

/// `approvals`: human approval of held requests (config/approvals.rs).
#[derive(Debug, Default, Deserialize)]
pub struct RawApprovals {
    pub page_url: Option<String>,
    pub max_pending: Option<usize>,
    pub default_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub max_wait: Option<String>,
    pub retention: Option<String>,
    pub webhook: Option<RawWebhook>,
}

/// `approvals.webhook`.
#[derive(Debug, Default, Deserialize)]
pub struct RawWebhook {
    pub url: Option<String>,
    pub url_file: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
}

/// `delegation`: the key delegation tokens are signed with, their issuer and lifetime.
#[derive(Debug, Default, Deserialize)]
pub struct RawDelegation {
    pub key_file: Option<String>,
    pub algorithm: Option<String>,
    pub issuer: Option<String>,
    pub max_ttl: Option<String>,
}

/// `introspection`: the clients (tools) that may call `POST /v1/introspect`.
#[derive(Debug, Default, Deserialize)]
pub struct RawIntrospection {
    #[serde(default)]
    pub clients: Vec<RawIntrospectionClient>,
}

/// One introspection client: HTTP Basic with `id` and the secret in `secret_file`.
#[derive(Debug, Deserialize)]
pub struct RawIntrospectionClient {
    pub id: String,
    pub secret_file: String,
}

/// `state`: where operator state (revocations, approvals) is kept.
#[derive(Debug, Default, Deserialize)]
pub struct RawState {
    pub backend: Option<String>,
    pub dir: Option<String>,
    /// The Redis backend's keys (`state.url`, …): see `config/state.rs`.
    pub url: Option<String>,
    pub url_file: Option<String>,
    pub password_file: Option<String>,
    pub prefix: Option<String>,
    pub on_unavailable: Option<String>,
    pub timeout: Option<String>,
    pub max_tasks: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    pub upstream_ca: Option<String>,
    pub ca: Option<RawCa>,
}

/// `tls.ca`: the CA toolgate mints interception certificates with.
#[derive(Debug, Deserialize)]
pub struct RawCa {
    pub cert: String,
    pub key: String,
    /// Most leaf certificates kept minted at once.
    pub cache_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLimits {
    pub max_body_bytes: Option<usize>,
    pub upstream_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub head_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_head_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_buffered_bytes: Option<usize>,
}
