//! The injector's configuration (`toolgate inject -c injector.yaml`): what it adds to a pod,
//! the same settings the chart's sidecar mode renders (the chart's injector mode writes this
//! file from its values). Parsed once, unknown keys refused, every error collected with its
//! field path.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

/// The uid (and gid) of toolgate's own containers: transparent capture exempts it.
pub const PROXY_UID: i64 = 1337;

/// How an agent's traffic reaches toolgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// HTTP_PROXY / HTTPS_PROXY for the agent's clients.
    Explicit,
    /// An init container redirects the pod's outbound TCP with iptables.
    Transparent,
}

impl Capture {
    pub fn as_str(self) -> &'static str {
        match self {
            Capture::Explicit => "explicit",
            Capture::Transparent => "transparent",
        }
    }

    /// The capture mode an annotation names.
    pub fn parse(s: &str) -> Option<Capture> {
        match s {
            "explicit" => Some(Capture::Explicit),
            "transparent" => Some(Capture::Transparent),
            _ => None,
        }
    }
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_config_map() -> String {
    "toolgate-config".into()
}
fn default_capture() -> Capture {
    Capture::Explicit
}
fn default_log_level() -> String {
    "info".into()
}
fn default_agent_uid() -> i64 {
    1000
}
fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_no_proxy() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// Listening ports of the injected toolgate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    #[serde(default = "Ports::proxy")]
    pub proxy: u16,
    #[serde(default = "Ports::admin")]
    pub admin: u16,
    #[serde(default = "Ports::transparent")]
    pub transparent: u16,
}

impl Ports {
    fn proxy() -> u16 {
        15001
    }
    fn admin() -> u16 {
        15000
    }
    fn transparent() -> u16 {
        15006
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            proxy: Ports::proxy(),
            admin: Ports::admin(),
            transparent: Ports::transparent(),
        }
    }
}

/// `toolgate init-iptables` settings for transparent capture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transparent {
    #[serde(default = "Transparent::ports")]
    pub ports: Vec<u16>,
    #[serde(default = "Transparent::include")]
    pub include_cidrs: Vec<String>,
    #[serde(default)]
    pub exclude_cidrs: Vec<String>,
    #[serde(default)]
    pub exclude_ports: Vec<u16>,
    /// `nft` or `legacy` (the iptables-legacy programs).
    #[serde(default = "Transparent::backend")]
    pub backend: String,
}

impl Transparent {
    fn ports() -> Vec<u16> {
        vec![80, 443]
    }
    fn include() -> Vec<String> {
        vec!["0.0.0.0/0".into()]
    }
    fn backend() -> String {
        "nft".into()
    }
}

impl Default for Transparent {
    fn default() -> Self {
        Transparent {
            ports: Transparent::ports(),
            include_cidrs: Transparent::include(),
            exclude_cidrs: Vec::new(),
            exclude_ports: Vec::new(),
            backend: Transparent::backend(),
        }
    }
}

/// The interception CA's Secret (in the pod's namespace).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ca {
    pub secret: String,
    /// The key of the certificate in the Secret (the agent gets only this one).
    #[serde(default = "Ca::cert_key")]
    pub cert_key: String,
}

impl Ca {
    fn cert_key() -> String {
        "tls.crt".into()
    }
}

/// The operator API's socket and token (mounted into toolgate only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// Directory of the operator socket (an in-memory emptyDir).
    pub socket_dir: Option<String>,
    /// The Secret holding the operator token, and its key.
    pub token_secret: Option<String>,
    #[serde(default = "Operator::token_key")]
    pub token_key: String,
}

impl Operator {
    fn token_key() -> String {
        "token".into()
    }
}

/// A Secret mounted into toolgate only, for `credentials` files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSecret {
    pub secret: String,
    pub mount_path: String,
}

/// Resource requests and limits (Kubernetes ResourceRequirements), per container.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default = "Resources::sidecar")]
    pub sidecar: Value,
    #[serde(default = "Resources::init")]
    pub init: Value,
    #[serde(default = "Resources::trust")]
    pub trust: Value,
}

impl Resources {
    fn sidecar() -> Value {
        json!({ "requests": { "cpu": "100m", "memory": "64Mi" }, "limits": { "memory": "256Mi" } })
    }
    fn init() -> Value {
        json!({ "requests": { "cpu": "10m", "memory": "16Mi" }, "limits": { "memory": "64Mi" } })
    }
    fn trust() -> Value {
        json!({ "requests": { "cpu": "10m", "memory": "16Mi" }, "limits": { "memory": "32Mi" } })
    }
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            sidecar: Resources::sidecar(),
            init: Resources::init(),
            trust: Resources::trust(),
        }
    }
}

/// Probe timings (periodSeconds, timeoutSeconds, failureThreshold) of toolgate's probes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    #[serde(default = "Probes::startup")]
    pub startup: Value,
    #[serde(default = "Probes::liveness")]
    pub liveness: Value,
    #[serde(default = "Probes::readiness")]
    pub readiness: Value,
}

impl Probes {
    fn startup() -> Value {
        json!({ "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 60 })
    }
    fn liveness() -> Value {
        json!({ "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3 })
    }
    fn readiness() -> Value {
        json!({ "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2 })
    }
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            startup: Probes::startup(),
            liveness: Probes::liveness(),
            readiness: Probes::readiness(),
        }
    }
}

/// What the injector adds to a pod.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The toolgate image (`repository:tag`).
    pub image: String,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// The ConfigMap holding `toolgate.yaml`, unless the pod's `toolgate.io/config` names one.
    #[serde(default = "default_config_map")]
    pub config_map: String,
    /// The capture mode, unless the pod's `toolgate.io/capture` names one.
    #[serde(default = "default_capture")]
    pub capture: Capture,
    #[serde(default)]
    pub ports: Ports,
    /// TOOLGATE_LOG.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Hosts the agent reaches directly under explicit capture (NO_PROXY).
    #[serde(default = "default_no_proxy")]
    pub no_proxy: Vec<String>,
    #[serde(default)]
    pub transparent: Transparent,
    /// The interception CA; absent: no trust bundle for the agent (HTTPS decided by host).
    #[serde(default)]
    pub ca: Option<Ca>,
    #[serde(default)]
    pub operator: Operator,
    /// `state.dir`: an emptyDir mounted into toolgate only.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// The Secret with the key for minted credentials, mounted at /etc/toolgate/signing.
    #[serde(default)]
    pub signing_key_secret: Option<String>,
    #[serde(default)]
    pub credential_secrets: Vec<CredentialSecret>,
    /// runAsUser and runAsGroup for agent containers that set neither (never 1337).
    #[serde(default = "default_agent_uid")]
    pub agent_uid: i64,
    /// The trust domain of the SPIFFE id toolgate is given (`TOOLGATE_AGENT_ID`).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub probes: Probes,
    /// Extra environment variables for toolgate (Kubernetes EnvVar objects).
    #[serde(default)]
    pub extra_env: Vec<Value>,
}

/// Why the injector's configuration was refused: every problem, with its field path.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {}", .errors.join("; "))]
    Invalid { path: String, errors: Vec<String> },
}

/// Whether `s` is a Kubernetes object name (DNS-1123 subdomain, at most 253 characters).
pub fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn absolute(s: &str) -> bool {
    s.starts_with('/') && s.len() > 1 && !s.split('/').any(|p| p == "..")
}

impl Template {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Template, TemplateError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: shown.clone(),
            source,
        })?;
        Template::parse(&text, &shown)
    }

    /// Parse and validate `text` (read from `shown`).
    pub fn parse(text: &str, shown: &str) -> Result<Template, TemplateError> {
        let template: Template = serde_yaml::from_str(text).map_err(|e| TemplateError::Parse {
            path: shown.to_string(),
            message: e.to_string(),
        })?;
        let errors = template.problems();
        if errors.is_empty() {
            Ok(template)
        } else {
            Err(TemplateError::Invalid {
                path: shown.to_string(),
                errors,
            })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.image.trim().is_empty() {
            errors.push("image: must name the toolgate image".to_string());
        }
        if !is_object_name(&self.config_map) {
            errors.push(format!(
                "config_map: {:?} is not a Kubernetes object name",
                self.config_map
            ));
        }
        if self.agent_uid == PROXY_UID || self.agent_uid < 0 {
            errors.push(format!(
                "agent_uid: {} cannot be an agent's uid (1337 is toolgate's, exempt from capture)",
                self.agent_uid
            ));
        }
        let p = &self.ports;
        if p.proxy == 0 || p.admin == 0 || p.transparent == 0 {
            errors.push("ports: every port must be 1 to 65535".to_string());
        }
        if let Some(ca) = &self.ca {
            if !is_object_name(&ca.secret) {
                errors.push(format!("ca.secret: {:?} is not a Secret name", ca.secret));
            }
        }
        for (field, name) in [
            ("operator.token_secret", &self.operator.token_secret),
            ("signing_key_secret", &self.signing_key_secret),
        ] {
            if let Some(name) = name {
                if !is_object_name(name) {
                    errors.push(format!("{field}: {name:?} is not a Secret name"));
                }
            }
        }
        for (field, dir) in [
            ("operator.socket_dir", &self.operator.socket_dir),
            ("state_dir", &self.state_dir),
        ] {
            if let Some(dir) = dir {
                if !absolute(dir) {
                    errors.push(format!("{field}: {dir:?} must be an absolute path"));
                }
            }
        }
        for (i, c) in self.credential_secrets.iter().enumerate() {
            if !is_object_name(&c.secret) {
                errors.push(format!(
                    "credential_secrets[{i}].secret: {:?} is not a Secret name",
                    c.secret
                ));
            }
            if !absolute(&c.mount_path) {
                errors.push(format!(
                    "credential_secrets[{i}].mount_path: {:?} must be an absolute path",
                    c.mount_path
                ));
            }
        }
        if !matches!(self.transparent.backend.as_str(), "nft" | "legacy") {
            errors.push(format!(
                "transparent.backend: {:?} must be nft or legacy",
                self.transparent.backend
            ));
        }
        if self.transparent.ports.is_empty() {
            errors.push("transparent.ports: name at least one port".to_string());
        }
        for (i, e) in self.extra_env.iter().enumerate() {
            if e.get("name").and_then(Value::as_str).is_none() {
                errors.push(format!("extra_env[{i}]: an EnvVar needs a name"));
            }
        }
        errors
    }
}
