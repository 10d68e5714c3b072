//! Configuration: parsed once from YAML, validated with every error collected, compiled into
//! the typed values the pipeline uses. Nothing on the request path parses config text.

mod approvals;
mod credentials;
mod delegation;
mod files;
mod identity;
mod jwks;
mod limits;
mod matching;
mod mcp;
mod operator;
mod raw;
mod signing;
mod state;
mod telemetry;
#[cfg(test)]
mod tests;
mod tls;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use approvals::{ApprovalSettings, Webhook};
pub use credentials::{is_scope, ExchangeSpec, Format, JwtSpec, Placement, SecretText};
pub use delegation::{
    DelegationSettings, IntrospectionClient, IntrospectionSettings, DEFAULT_DELEGATION_TTL,
};
pub use files::{DiskFiles, EmbeddedFiles, Files, ProcessEnv, StaticEnv, Vars};
pub use identity::{TaskTokens, TokenIssuer, AGENT_LEEWAY};
pub use jwks::{unverified_claims, KeySet, TokenError, MAX_TOKEN_BYTES};
pub use matching::{body_cap, MAX_BODY_BYTES};
pub use mcp::{LockFile, McpSettings, Pinned, DEFAULT_MAX_LIST_BYTES};
pub use operator::{
    AdminSettings, DEFAULT_MAX_REVOCATION_TTL, LONGEST_REVOCATION_TTL, MAX_SOCKET_PATH,
    MIN_DISTINCT_TOKEN_CHARS, MIN_TOKEN_CHARS,
};
pub use signing::{generate_ed25519_pem, SigningKey};
pub use state::{
    OnUnavailable, RedisSettings, StateBackend, StateSettings, DEFAULT_REDIS_MAX_TASKS,
    DEFAULT_REDIS_TIMEOUT,
};

use crate::classify::Catalog;

/// A validated configuration, ready to serve.
#[derive(Debug)]
pub struct Config {
    /// The file this configuration came from (for messages).
    pub origin: PathBuf,
    pub listen: Listen,
    /// Worker threads serving the proxy listener.
    pub workers: usize,
    pub agent: Agent,
    pub catalog: Arc<Catalog>,
    pub routes: Vec<Route>,
    pub policy: PolicySource,
    /// `policy.shadow`: a candidate policy evaluated beside the live one, never enforced.
    pub shadow: Option<ShadowSource>,
    pub credentials: BTreeMap<String, CredentialSpec>,
    pub telemetry: Telemetry,
    pub admin: AdminSettings,
    /// Where operator state (revocations, approvals) is kept; read at start only.
    pub state: StateSettings,
    /// Human approval of held requests.
    pub approvals: ApprovalSettings,
    pub chain: ChainSettings,
    pub tls: TlsSettings,
    pub limits: Limits,
    /// Issuers whose task tokens (`x-toolgate-task-token`) are accepted; `None`: none are.
    pub task_tokens: Option<TaskTokens>,
    /// MCP: the `tools/list` filter's bounds, remembered definitions, lock files.
    pub mcp: McpSettings,
    /// How this toolgate signs delegation tokens; `None`: delegation is off.
    pub delegation: Option<DelegationSettings>,
    /// Who may introspect credentials besides the operator.
    pub introspection: IntrospectionSettings,
    /// Hash of every file read to build this config: equal fingerprints, equal configs.
    pub fingerprint: u64,
    /// Settings that are valid but weaken a guarantee (a plain-HTTP upstream or STS), with
    /// their field paths; `toolgate check` and `toolgate run` print them.
    pub warnings: Vec<ConfigError>,
}

/// Socket addresses toolgate listens on.
#[derive(Debug, Clone)]
pub struct Listen {
    pub proxy: SocketAddr,
    /// The transparent listener, for connections iptables redirected (`listen.transparent`).
    pub transparent: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The operator listener's unix socket (`listen.operator: unix:/path`).
    pub operator: Option<PathBuf>,
}

/// Who the agent behind this sidecar is.
#[derive(Debug, Clone, Default)]
pub struct Agent {
    pub id: String,
    /// The claims of the `agent.id_file` token (`input.agent.claims`).
    pub claims: Option<serde_json::Value>,
    /// The `agent.id_file` token itself: the subject token of token exchanges.
    pub token: Option<SecretText>,
    /// When that token expires: from then on every request is refused until a new one arrives.
    pub expires: Option<std::time::SystemTime>,
}

/// A path prefix on the proxy listener that names a tool directly (`/jira/…` → `jira`).
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub tool: usize,
}

/// Rego sources and data documents, read at load time.
#[derive(Debug, Clone)]
pub struct PolicySource {
    /// (file name, Rego text) in a stable order.
    pub modules: Vec<(String, String)>,
    /// Data documents merged under `data.`, as JSON values.
    pub data: serde_json::Value,
    /// The rule that yields the decision, e.g. `data.toolgate.decision`.
    pub query: String,
    pub mode: PolicyMode,
}

/// `policy.shadow`, read apart from the rest of the file: a shadow whose files cannot be read
/// never keeps the configuration (and its live policy) from loading. `Err` holds every problem
/// found, with its field path; `toolgate check` reports them, a running toolgate keeps its
/// last good shadow.
#[derive(Debug, Clone)]
pub struct ShadowSource {
    pub source: Result<PolicySource, Vec<ConfigError>>,
}

/// Whether denials are enforced or only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyMode {
    #[default]
    Enforce,
    /// Would-deny requests are logged and forwarded as they came.
    DryRun,
}

/// Telemetry sinks.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub decision_log: DecisionLogSink,
    /// Decision-log lines also carry the policy input and the live decision, so `toolgate
    /// replay` can decide them again (`telemetry.decision_log: { input: true }`).
    pub decision_log_input: bool,
    /// Where spans are exported; `None`: only the standard `OTEL_EXPORTER_OTLP_*` environment
    /// can enable export.
    pub otlp: Option<Otlp>,
}

/// An OTLP trace exporter's destination (`telemetry.otlp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    /// The complete URL spans are sent to (for HTTP, including `/v1/traces`).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    #[default]
    Http,
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
}

/// Where decision-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionLogSink {
    Stdout,
    File(PathBuf),
    Off,
}

/// Where a credential's value comes from and how it is presented to the tool.
#[derive(Debug, Clone)]
pub enum CredentialSpec {
    /// A static secret read from a file or an environment variable.
    Secret(SecretSpec),
    /// A JWT minted per allowed action, signed with toolgate's key.
    Jwt(JwtSpec),
    /// A token obtained from an STS by RFC 8693 token exchange.
    TokenExchange(ExchangeSpec),
}

/// A `kind: secret` credential, read at load time.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// Where the value goes: a header, or a query parameter.
    pub placement: Placement,
    /// The value on the wire: the header value (`format` applied), or the query parameter's
    /// value, percent-encoded.
    pub value: SecretValue,
    /// The secret in every form it could come back in, masked in the tool's response.
    pub needles: Arc<[SecretText]>,
}

/// A credential value: marked sensitive, never printed, never serialised.
#[derive(Clone)]
pub struct SecretValue(http::HeaderValue);

impl SecretValue {
    /// Wrap a header value, marking it sensitive for HPACK and debug output.
    pub fn new(mut value: http::HeaderValue) -> SecretValue {
        value.set_sensitive(true);
        SecretValue(value)
    }

    /// The value to put on the wire.
    pub fn header_value(&self) -> &http::HeaderValue {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl CredentialSpec {
    /// The header this credential is written to, which must also be stripped from the agent
    /// (`None` for a secret sent as a query parameter).
    pub fn header(&self) -> Option<&http::HeaderName> {
        match self {
            CredentialSpec::Secret(s) => match &s.placement {
                Placement::Header(h) => Some(h),
                Placement::Query(_) => None,
            },
            CredentialSpec::Jwt(j) => Some(&j.header),
            CredentialSpec::TokenExchange(e) => Some(&e.header),
        }
    }

    /// The kind as configured and as metrics and logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialSpec::Secret(_) => "secret",
            CredentialSpec::Jwt(_) => "jwt",
            CredentialSpec::TokenExchange(_) => "token_exchange",
        }
    }
}

/// How actions are grouped into tasks.
#[derive(Debug, Clone)]
pub struct ChainSettings {
    pub task_header: http::HeaderName,
    pub max_actions: usize,
    /// Most tasks remembered at once, in each pool (verified and named by the agent).
    pub max_tasks: usize,
    pub idle_ttl: Duration,
    /// How long a label set on the agent lasts from when it was last set.
    pub agent_label_ttl: Duration,
    /// Requests without a verified task token are refused (`task-required`).
    pub require_task_token: bool,
    /// How long an ended task stays ended (refused), its chain kept for audit.
    pub ended_retention: Duration,
}

/// TLS settings for upstream connections.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Extra roots (PEM) trusted for upstream connections, on top of the system's.
    pub upstream_ca: Option<PathBuf>,
    /// The CA that signs interception certificates (`tls.ca`), read at load time.
    pub ca: Option<CaSource>,
}

pub use tls::{CaSource, DEFAULT_LEAF_CACHE};

/// Limits on what a client controls (see `config/limits.rs` for the defaults and bounds).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Time a request head may take from its first byte to its blank line.
    pub head_timeout: Duration,
    /// Time a connection may wait for the first byte of a request: a new connection, and a
    /// kept-alive one between requests.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers) read from an agent.
    pub max_head_bytes: usize,
    /// Most concurrent agent connections on the proxy and transparent listeners together.
    pub max_connections: usize,
    /// Most bytes of request heads and bodies held for all agent connections together.
    pub max_buffered_bytes: usize,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path inside the file, e.g. `tools[0].actions[1].match.path`.
    pub path: String,
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub origin: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = self.origin.display();
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.path.is_empty() {
                write!(f, "{origin}: {}", e.message)?;
            } else {
                write!(f, "{origin}: {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Load a configuration file from disk; relative paths resolve against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::load_from(path, &DiskFiles::new(base), &ProcessEnv)
    }

    /// Load a configuration named `path` through `files`, reading environment through `vars`.
    pub fn load_from(
        path: &Path,
        files: &dyn Files,
        vars: &dyn Vars,
    ) -> Result<Config, ConfigErrors> {
        let fail = |message: String| ConfigErrors {
            origin: path.to_path_buf(),
            errors: vec![ConfigError {
                path: String::new(),
                message,
            }],
        };
        let name = path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| path.to_path_buf());
        let bytes = files
            .read(&name)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| fail("not valid UTF-8".to_string()))?;
        let raw = parse(&text).map_err(|errors| ConfigErrors {
            origin: path.to_path_buf(),
            errors,
        })?;
        let recording = files::Recording::new(files, &bytes_hash(&text));
        let mut config = validate::compile(raw, path, &recording, vars)?;
        config.fingerprint = recording.fingerprint();
        Ok(config)
    }
}

fn bytes_hash(text: &str) -> [u8; 8] {
    files::fnv(0xcbf2_9ce4_8422_2325, text.as_bytes()).to_le_bytes()
}

/// Parse YAML into the raw model, reporting every unknown key (and a type error, if any).
fn parse(text: &str) -> Result<raw::RawConfig, Vec<ConfigError>> {
    let mut unknown = Vec::new();
    let de = serde_yaml::Deserializer::from_str(text);
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(yaml_path(&path));
    let ignored = serde_ignored::Deserializer::new(de, &mut record);
    let parsed: Result<raw::RawConfig, _> = serde_path_to_error::deserialize(ignored);
    let mut errors: Vec<ConfigError> = unknown
        .into_iter()
        .map(|path| ConfigError {
            path,
            message: "unknown key".to_string(),
        })
        .collect();
    match parsed {
        Ok(raw) if errors.is_empty() => Ok(raw),
        Ok(_) => Err(errors),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            errors.push(ConfigError {
                path,
                message: e.into_inner().to_string(),
            });
            Err(errors)
        }
    }
}

/// Render a `serde_ignored` path as `tools[0].actions[1].mtch`.
fn yaml_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", yaml_path(parent)),
        P::Map { parent, key } => {
            let key = key.clone();
            let parent = yaml_path(parent);
            if parent.is_empty() {
                key
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            yaml_path(parent)
        }
    }
}
