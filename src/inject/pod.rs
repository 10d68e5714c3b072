//! What the injector adds to a pod — the same containers, volumes, environment and mounts the
//! chart's sidecar mode renders (charts/toolgate/templates/_sidecar.tpl) — as JSON values.

use serde_json::{json, Value};

use super::template::{Capture, Template, PROXY_UID};

/// Where toolgate's configuration directory is mounted.
pub const CONFIG_DIR: &str = "/etc/toolgate/config";
/// The agent's trust bundle: the system roots plus toolgate's CA certificate.
pub const TRUST_BUNDLE: &str = "/etc/toolgate/trust/ca-bundle.crt";
/// toolgate's CA certificate alone (NODE_EXTRA_CA_CERTS).
pub const CA_CERT: &str = "/etc/toolgate/ca-cert/ca.crt";
/// Where the operator token is mounted in toolgate's container.
pub const OPERATOR_TOKEN_DIR: &str = "/var/run/secrets/toolgate/operator";

/// Names of the containers the injector adds, in the order they run.
pub const CONTAINERS: [&str; 3] = ["toolgate-init", "toolgate-trust", "toolgate"];

/// The settings one pod is injected with.
#[derive(Debug, Clone)]
pub struct Choice<'a> {
    pub template: &'a Template,
    pub config_map: String,
    pub capture: Capture,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub agent_id: String,
    /// The pod's fsGroup when it sets one other than 1337: toolgate's container runs with it
    /// as its group, so the group-readable Secrets stay readable.
    pub group: Option<i64>,
}

fn env(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } })
}

fn mount(name: &str, path: &str, read_only: bool) -> Value {
    if read_only {
        json!({ "name": name, "mountPath": path, "readOnly": true })
    } else {
        json!({ "name": name, "mountPath": path })
    }
}

fn restricted(group: Option<i64>) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": PROXY_UID,
        "runAsGroup": group.unwrap_or(PROXY_UID),
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" }
    })
}

fn probe(path: &str, timings: &Value) -> Value {
    let mut probe = json!({ "httpGet": { "path": path, "port": "tg-admin" } });
    if let (Some(p), Some(t)) = (probe.as_object_mut(), timings.as_object()) {
        for (k, v) in t {
            p.insert(k.clone(), v.clone());
        }
    }
    probe
}

/// The volume of a credential Secret: `cred-<name>`, cut to 63 characters (as the chart).
fn secret_dir(name: &str) -> String {
    let full = format!("cred-{name}");
    full.get(..63)
        .unwrap_or(&full)
        .trim_end_matches('-')
        .to_string()
}

/// The toolgate container: a native sidecar (an init container with restartPolicy Always).
pub fn sidecar(c: &Choice<'_>) -> Value {
    let t = c.template;
    let mut env_vars = vec![
        env("TOOLGATE_LOG", &t.log_level),
        field_env("K8S_POD_NAME", "metadata.name"),
        field_env("K8S_NAMESPACE_NAME", "metadata.namespace"),
        field_env("K8S_NODE_NAME", "spec.nodeName"),
        // The pod's SPIFFE id, for a configuration with `agent: { id_env: TOOLGATE_AGENT_ID }`.
        env("TOOLGATE_AGENT_ID", &c.agent_id),
    ];
    env_vars.extend(t.extra_env.iter().cloned());
    let mut ports = vec![
        json!({ "name": "tg-proxy", "containerPort": t.ports.proxy, "protocol": "TCP" }),
        json!({ "name": "tg-admin", "containerPort": t.ports.admin, "protocol": "TCP" }),
    ];
    if c.capture == Capture::Transparent {
        ports.push(
            json!({ "name": "tg-transparent", "containerPort": t.ports.transparent, "protocol": "TCP" }),
        );
    }
    let mut mounts = vec![
        mount("toolgate-config", CONFIG_DIR, true),
        mount("toolgate-tmp", "/tmp", false),
    ];
    if let Some(dir) = &t.operator.socket_dir {
        mounts.push(mount("toolgate-operator", dir, false));
    }
    if t.operator.token_secret.is_some() {
        mounts.push(mount("toolgate-operator-token", OPERATOR_TOKEN_DIR, true));
    }
    if let Some(dir) = &t.state_dir {
        mounts.push(mount("toolgate-state", dir, false));
    }
    if t.ca.is_some() {
        mounts.push(mount("toolgate-ca", "/etc/toolgate/ca", true));
    }
    if t.signing_key_secret.is_some() {
        mounts.push(mount("toolgate-signing-key", "/etc/toolgate/signing", true));
    }
    for s in &t.credential_secrets {
        mounts.push(mount(&secret_dir(&s.secret), &s.mount_path, true));
    }
    json!({
        "name": "toolgate",
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "restartPolicy": "Always",
        "args": ["run", "-c", format!("{CONFIG_DIR}/toolgate.yaml")],
        "env": env_vars,
        "ports": ports,
        "startupProbe": probe("/readyz", &t.probes.startup),
        "livenessProbe": probe("/healthz", &t.probes.liveness),
        "readinessProbe": probe("/readyz", &t.probes.readiness),
        "resources": t.resources.sidecar,
        "securityContext": restricted(c.group),
        "volumeMounts": mounts,
    })
}

/// The iptables step of transparent capture: root with NET_ADMIN and NET_RAW, once.
pub fn capture_step(c: &Choice<'_>) -> Value {
    let t = c.template;
    let tr = &t.transparent;
    let join = |v: &[String]| v.join(",");
    let ports: Vec<String> = tr.ports.iter().map(u16::to_string).collect();
    let mut args = vec![
        "init-iptables".to_string(),
        format!("--transparent-port={}", t.ports.transparent),
        format!("--admin-port={}", t.ports.admin),
        format!("--proxy-uid={PROXY_UID}"),
        format!("--ports={}", join(&ports)),
        format!("--include-cidrs={}", join(&tr.include_cidrs)),
    ];
    if !tr.exclude_cidrs.is_empty() {
        args.push(format!("--exclude-cidrs={}", join(&tr.exclude_cidrs)));
    }
    if !tr.exclude_ports.is_empty() {
        let ports: Vec<String> = tr.exclude_ports.iter().map(u16::to_string).collect();
        args.push(format!("--exclude-ports={}", join(&ports)));
    }
    if tr.backend == "legacy" {
        args.push("--iptables=iptables-legacy".into());
        args.push("--iptables-restore=iptables-legacy-restore".into());
    }
    json!({
        "name": "toolgate-init",
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "args": args,
        "resources": t.resources.init,
        "securityContext": {
            "runAsNonRoot": false,
            "runAsUser": 0,
            "runAsGroup": 0,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" }
        },
        "volumeMounts": [mount("toolgate-init-run", "/run", false)],
    })
}

/// The step that writes the agent's trust bundle: system roots plus toolgate's CA certificate.
pub fn trust_step(c: &Choice<'_>) -> Value {
    let t = c.template;
    json!({
        "name": "toolgate-trust",
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "command": [
            "/bin/sh",
            "-c",
            format!("cat /etc/ssl/certs/ca-certificates.crt {CA_CERT} > {TRUST_BUNDLE}")
        ],
        "resources": t.resources.trust,
        "securityContext": restricted(None),
        "volumeMounts": [
            mount("toolgate-ca-cert", "/etc/toolgate/ca-cert", true),
            mount("toolgate-trust", "/etc/toolgate/trust", false),
        ],
    })
}

/// The init containers to put first in the pod, in order.
pub fn init_containers(c: &Choice<'_>) -> Vec<Value> {
    let mut out = Vec::with_capacity(3);
    if c.capture == Capture::Transparent {
        out.push(capture_step(c));
    }
    if c.template.ca.is_some() {
        out.push(trust_step(c));
    }
    out.push(sidecar(c));
    out
}

/// Environment for each of the agent's containers: proxy settings (explicit) and CA trust.
pub fn agent_env(c: &Choice<'_>) -> Vec<Value> {
    let t = c.template;
    let mut out = Vec::new();
    if c.capture == Capture::Explicit {
        let proxy = format!("http://127.0.0.1:{}", t.ports.proxy);
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            out.push(env(name, &proxy));
        }
        let no_proxy = t.no_proxy.join(",");
        for name in ["NO_PROXY", "no_proxy"] {
            out.push(env(name, &no_proxy));
        }
    }
    if t.ca.is_some() {
        for name in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
            out.push(env(name, TRUST_BUNDLE));
        }
        out.push(env("NODE_EXTRA_CA_CERTS", CA_CERT));
    }
    out
}

/// Mounts for each of the agent's containers: the CA certificate and the trust bundle — never
/// the CA key, the operator socket, the token or the state.
pub fn agent_mounts(c: &Choice<'_>) -> Vec<Value> {
    if c.template.ca.is_none() {
        return Vec::new();
    }
    vec![
        mount("toolgate-ca-cert", "/etc/toolgate/ca-cert", true),
        mount("toolgate-trust", "/etc/toolgate/trust", true),
    ]
}

/// The pod volumes for all of the above.
pub fn volumes(c: &Choice<'_>) -> Vec<Value> {
    let t = c.template;
    let mut out = vec![
        json!({ "name": "toolgate-config", "configMap": { "name": c.config_map } }),
        json!({ "name": "toolgate-tmp", "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } }),
    ];
    if c.capture == Capture::Transparent {
        out.push(
            json!({ "name": "toolgate-init-run", "emptyDir": { "medium": "Memory", "sizeLimit": "1Mi" } }),
        );
    }
    if t.operator.socket_dir.is_some() {
        out.push(
            json!({ "name": "toolgate-operator", "emptyDir": { "medium": "Memory", "sizeLimit": "1Mi" } }),
        );
    }
    if let Some(secret) = &t.operator.token_secret {
        let key = &t.operator.token_key;
        out.push(json!({
            "name": "toolgate-operator-token",
            "secret": { "secretName": secret, "items": [{ "key": key, "path": key }], "defaultMode": 0o440 }
        }));
    }
    if t.state_dir.is_some() {
        out.push(json!({ "name": "toolgate-state", "emptyDir": { "sizeLimit": "64Mi" } }));
    }
    if let Some(ca) = &t.ca {
        out.push(json!({
            "name": "toolgate-ca",
            "secret": { "secretName": ca.secret, "defaultMode": 0o440 }
        }));
        out.push(json!({
            "name": "toolgate-ca-cert",
            "secret": {
                "secretName": ca.secret,
                "items": [{ "key": ca.cert_key, "path": "ca.crt" }],
                "defaultMode": 0o444
            }
        }));
        out.push(json!({ "name": "toolgate-trust", "emptyDir": { "sizeLimit": "4Mi" } }));
    }
    if let Some(secret) = &t.signing_key_secret {
        out.push(json!({
            "name": "toolgate-signing-key",
            "secret": { "secretName": secret, "defaultMode": 0o440 }
        }));
    }
    for s in &t.credential_secrets {
        out.push(json!({
            "name": secret_dir(&s.secret),
            "secret": { "secretName": s.secret, "defaultMode": 0o440 }
        }));
    }
    out
}
