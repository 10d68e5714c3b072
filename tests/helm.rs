//! The Helm chart, checked offline: Helm's Go SDK (PyPI `helm-python-sdk`) lints and renders
//! it with every values file under `charts/toolgate/ci/`, PyPI `kubernetes-validate` checks
//! each rendered object strictly against Kubernetes 1.29, 1.33 and the newest bundled version,
//! and the rendered toolgate configuration goes through the real `toolgate check`. Injector
//! mode's webhook is served by the real `toolgate inject` with the certificate and
//! configuration the chart generated, and adds exactly what the sidecar mode renders.
//! `tests/helm/validate.py` does the Python side; scripts/test.sh installs its packages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

mod support;

const BINARY: &str = env!("CARGO_BIN_EXE_toolgate");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn chart() -> PathBuf {
    Path::new(ROOT).join("charts/toolgate")
}

/// Run `validate.py ARGS`; (exit code, the JSON it printed).
fn validate(args: &[&str]) -> (i32, Value) {
    let script = Path::new(ROOT).join("tests/helm/validate.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 is required (scripts/test.sh installs the Python packages)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "run scripts/test.sh, which installs helm-python-sdk and kubernetes-validate: {stderr}"
    );
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("validate.py {args:?} printed no JSON ({e}): {stdout}{stderr}"));
    (out.status.code().unwrap_or(-1), json)
}

/// Every case rendered once per test binary: the report and the directory of manifests.
struct Rendered {
    report: Value,
    code: i32,
    dir: tempfile::TempDir,
}

fn rendered() -> &'static Rendered {
    static RENDERED: OnceLock<Rendered> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (code, report) = validate(&[
            "render",
            chart().to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ]);
        Rendered { report, code, dir }
    })
}

/// The objects rendered for one values case (`default`, `explicit`, …).
fn objects(case: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(rendered().dir.path().join(format!("{case}.yaml"))).unwrap();
    objects_in(&text)
}

fn objects_in(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn pod(objects: &[Value]) -> &Value {
    &find(objects, "Deployment")["spec"]["template"]["spec"]
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// Point the pod's paths in the rendered `toolgate.yaml` in `dir` at local stand-ins: the
/// operator token the chart generated (written by `validate.py config` under `secrets/`), a
/// private directory for the operator socket, one for the state. Returns the rendered text
/// as the chart wrote it.
fn localize(dir: &Path) -> String {
    let yaml = dir.join("toolgate.yaml");
    let rendered = std::fs::read_to_string(&yaml).unwrap();
    let run = dir.join("run");
    let state = dir.join("state");
    for d in [&run, &state] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    let token = dir.join("secrets/demo-toolgate-operator-token");
    let ca = dir.join("secrets/demo-toolgate-ca");
    let local = rendered
        .replace(
            "/var/run/secrets/toolgate/operator/",
            &format!("{}/", token.display()),
        )
        .replace(
            "unix:/var/run/toolgate/",
            &format!("unix:{}/", run.display()),
        )
        .replace(
            "dir: /var/lib/toolgate",
            &format!("dir: {}", state.display()),
        );
    // The CA the chart generated (on by default), where the pod mounts its Secret.
    let local = if ca.exists() {
        local.replace("/etc/toolgate/ca/", &format!("{}/", ca.display()))
    } else {
        local
    };
    std::fs::write(&yaml, local).unwrap();
    rendered
}

/// Render a case's ConfigMap to a directory and run `toolgate check` on it.
fn check_rendered_config(values: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let (code, files) = validate(&[
        "config",
        chart().to_str().unwrap(),
        values,
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{files}");
    localize(dir.path());
    let out = Command::new(BINARY)
        .args(["check", "-c"])
        .arg(dir.path().join("toolgate.yaml"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn ci_values(case: &str) -> String {
    chart()
        .join(format!("ci/{case}-values.yaml"))
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn every_values_file_lints_clean_and_renders_objects_kubernetes_accepts_strictly() {
    let r = rendered();
    assert_eq!(r.code, 0, "{:#}", r.report);
    let versions = r.report["kube_versions"].as_array().unwrap();
    assert_eq!(versions[0], "1.29.0");
    assert_eq!(versions[1], "1.33.0");
    assert!(versions[2].as_str().unwrap() >= "1.33.0", "{versions:?}");
    let cases = r.report["cases"].as_object().unwrap();
    for case in [
        "default",
        "explicit",
        "transparent",
        "classic",
        "existing-configmap",
        "injector",
        "injector-cert-manager",
    ] {
        let c = &cases[case];
        assert_eq!(c["lint"], serde_json::json!([]), "{case}: {c:#}");
        assert_eq!(c["errors"], serde_json::json!([]), "{case}: {c:#}");
        assert!(!c["objects"].as_array().unwrap().is_empty(), "{case}");
    }
}

#[test]
fn schema_rejects_wrong_types_and_unknown_keys() {
    let (code, report) = validate(&["reject", chart().to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");
    let rejected = &report["rejected"];
    for (case, says) in [
        (
            "wrong type: workers as a string",
            "'/sidecar/workers': got string, want integer",
        ),
        (
            "unknown key in sidecar",
            "'/sidecar': additional properties 'wrokers' not allowed",
        ),
        (
            "unknown key at the top",
            "additional properties 'replicaCount' not allowed",
        ),
        (
            "unknown key in a tool (toolgate would reject it too)",
            "'/config/tools/0': additional properties 'protocl' not allowed",
        ),
        (
            "shutdown timeout set twice",
            "'shutdown_timeout' not allowed",
        ),
        (
            "operator socket path not absolute",
            "'/operator/socket/path': 'operator.sock' does not match",
        ),
        (
            "require_task_token as a string",
            "'/config/chain/require_task_token': got string, want boolean",
        ),
    ] {
        let message = rejected[case].as_str().unwrap_or_default();
        assert!(message.contains(says), "{case}: {message:?}");
    }
    assert_eq!(report["accepted"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["render_refused"], true);
    let refused = report["render_failures"]
        ["agent running as toolgate's uid under transparent capture"]
        .as_str()
        .unwrap();
    assert!(refused.contains("must not be 1337"), "{refused}");
    let refused = report["render_failures"]
        ["operator socket in a directory mounted for something else"]
        .as_str()
        .unwrap();
    assert!(refused.contains("operator.socket.path: /tmp"), "{refused}");
}

#[test]
fn default_values_render_a_config_that_toolgate_check_accepts() {
    let (code, text) = check_rendered_config("-", &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok — 1 tools, 2 actions"), "{text}");
}

#[test]
fn explicit_and_classic_values_render_configs_that_toolgate_check_accepts() {
    let (code, text) = check_rendered_config(&ci_values("explicit"), &[("JIRA_TOKEN", "t0k3n")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok — 1 tools, 2 actions, 1 routes"), "{text}");
    let (code, text) = check_rendered_config(&ci_values("classic"), &[]);
    assert_eq!(code, 0, "{text}");
}

/// The transparent case: `listen.transparent`, `tls.ca` (with the CA the chart generates, an
/// ECDSA key in SEC1 form as Helm writes it, in place of the Secret the pod mounts at
/// /etc/toolgate/ca) and `telemetry.otlp` are all accepted by `toolgate check`.
#[test]
fn transparent_values_render_a_config_that_toolgate_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (code, files) = validate(&[
        "config",
        chart().to_str().unwrap(),
        &ci_values("transparent"),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{files}");
    let secret = dir.path().join("secrets/demo-toolgate-ca");
    assert!(secret.join("tls.key").exists(), "no generated CA: {files}");
    let yaml = dir.path().join("toolgate.yaml");
    // As rendered: the pod's paths; localize points them at the generated CA and the rest.
    let rendered = localize(dir.path());
    assert!(
        rendered.contains("transparent: 127.0.0.1:15006"),
        "{rendered}"
    );
    assert!(rendered.contains("/etc/toolgate/ca/tls.crt"), "{rendered}");
    let local = std::fs::read_to_string(&yaml).unwrap();
    assert!(
        local.contains(&format!("{}/tls.crt", secret.display())),
        "{local}"
    );
    let out = Command::new(BINARY)
        .args(["check", "-c"])
        .arg(&yaml)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ok"), "{text}");
}

#[test]
fn telemetry_values_render_an_otlp_config_that_toolgate_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "telemetry: { otlp: { endpoint: \"http://tempo.observability:4317\", protocol: grpc } }\n",
    )
    .unwrap();
    let (code, text) = check_rendered_config(values.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{text}");
    // The pod's identity reaches toolgate for its spans' resource.
    let objects = objects("default");
    let toolgate = named(&pod(&objects)["initContainers"], "toolgate");
    for (var, field) in [
        ("K8S_POD_NAME", "metadata.name"),
        ("K8S_NAMESPACE_NAME", "metadata.namespace"),
        ("K8S_NODE_NAME", "spec.nodeName"),
    ] {
        assert_eq!(
            named(&toolgate["env"], var)["valueFrom"]["fieldRef"]["fieldPath"],
            field
        );
    }
}

#[test]
fn native_sidecar_is_ready_before_the_agent_runs_least_privileged_and_outlives_it() {
    let objects = objects("default");
    let pod = pod(&objects);
    let toolgate = named(&pod["initContainers"], "toolgate");
    assert_eq!(toolgate["restartPolicy"], "Always");
    assert_eq!(names(&pod["containers"]), ["agent"]);

    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(toolgate[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(toolgate[probe]["httpGet"]["port"], "tg-admin", "{probe}");
    }
    assert_eq!(
        named(&toolgate["ports"], "tg-admin")["containerPort"],
        15000
    );

    let sc = &toolgate["securityContext"];
    assert_eq!(sc["runAsUser"], 1337);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(toolgate["resources"]["requests"]["memory"].is_string());

    // The ConfigMap is mounted as a directory: updates propagate (a subPath mount never does).
    let mount = named(&toolgate["volumeMounts"], "toolgate-config");
    assert_eq!(mount["mountPath"], "/etc/toolgate/config");
    assert!(mount["subPath"].is_null());
    assert_eq!(
        named(&pod["volumes"], "toolgate-config")["configMap"]["name"],
        "demo-toolgate-config"
    );
    assert_eq!(
        toolgate["args"],
        serde_json::json!(["run", "-c", "/etc/toolgate/config/toolgate.yaml"])
    );

    // Agent 30 s + toolgate's drain (limits.shutdown_timeout: 5s) + 2 s margin.
    assert_eq!(pod["terminationGracePeriodSeconds"], 37);
    let config = find(&objects, "ConfigMap")["data"]["toolgate.yaml"]
        .as_str()
        .unwrap();
    assert!(config.contains("shutdown_timeout: 5s"), "{config}");
    assert!(
        config.contains("id: spiffe://cluster.local/ns/agents/sa/demo-toolgate"),
        "{config}"
    );

    // Explicit capture by default: the agent's clients are pointed at the sidecar.
    let agent = named(&pod["containers"], "agent");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        assert_eq!(env(agent, var), Some("http://127.0.0.1:15001"), "{var}");
    }
    assert_eq!(env(agent, "NO_PROXY"), Some("localhost,127.0.0.1,::1"));
}

#[test]
fn transparent_capture_runs_init_iptables_with_only_net_admin_and_net_raw() {
    let objects = objects("transparent");
    let pod = pod(&objects);
    assert_eq!(
        names(&pod["initContainers"]),
        ["toolgate-init", "toolgate-trust", "toolgate"]
    );
    let init = named(&pod["initContainers"], "toolgate-init");
    let sc = &init["securityContext"];
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert!(init["restartPolicy"].is_null(), "a one-shot init step");
    // Nothing else in the pod gets capabilities.
    for c in pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["containers"].as_array().unwrap())
    {
        if c["name"] != "toolgate-init" {
            assert!(
                c["securityContext"]["capabilities"]["add"].is_null(),
                "{}",
                c["name"]
            );
        }
    }

    // The rendered arguments are ones the real binary accepts.
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "init-iptables");
    let out = Command::new(BINARY)
        .args(&args)
        .arg("--dry-run")
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for rule in [
        "-A TOOLGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A TOOLGATE_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A TOOLGATE_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A TOOLGATE_OUTPUT -p tcp --dport 8443 -j REDIRECT --to-ports 15006",
    ] {
        assert!(rules.lines().any(|l| l == rule), "missing {rule}:\n{rules}");
    }

    // No proxy variables, but the agent trusts toolgate's CA — and never sees its key.
    let agent = named(&pod["containers"], "agent");
    assert_eq!(env(agent, "HTTP_PROXY"), None);
    assert_eq!(
        env(agent, "SSL_CERT_FILE"),
        Some("/etc/toolgate/trust/ca-bundle.crt")
    );
    assert_eq!(
        env(agent, "REQUESTS_CA_BUNDLE"),
        Some("/etc/toolgate/trust/ca-bundle.crt")
    );
    assert_eq!(
        env(agent, "NODE_EXTRA_CA_CERTS"),
        Some("/etc/toolgate/ca-cert/ca.crt")
    );
    assert_eq!(
        names(&agent["volumeMounts"]),
        ["toolgate-ca-cert", "toolgate-trust"]
    );
    let cert_only = &named(&pod["volumes"], "toolgate-ca-cert")["secret"]["items"];
    assert_eq!(
        cert_only,
        &serde_json::json!([{ "key": "tls.crt", "path": "ca.crt" }])
    );
    let toolgate = named(&pod["initContainers"], "toolgate");
    assert_eq!(
        named(&toolgate["volumeMounts"], "toolgate-ca")["mountPath"],
        "/etc/toolgate/ca"
    );

    let config = find(&objects, "ConfigMap")["data"]["toolgate.yaml"]
        .as_str()
        .unwrap();
    for key in [
        "transparent: 127.0.0.1:15006",
        "cert: /etc/toolgate/ca/tls.crt",
        "endpoint: http://jaeger-collector.observability:4318",
    ] {
        assert!(config.contains(key), "{key}: {config}");
    }
    // Generated CA and signing key, kept across upgrades and uninstalls.
    for o in objects.iter().filter(|o| o["kind"] == "Secret") {
        assert_eq!(
            o["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }
}

#[test]
fn classic_sidecar_is_a_second_container_with_credentials_only_it_mounts() {
    let objects = objects("classic");
    let pod = pod(&objects);
    assert_eq!(names(&pod["containers"]), ["agent", "toolgate"]);
    // Only the trust step runs first (the interception CA is on by default): no native sidecar.
    assert_eq!(names(&pod["initContainers"]), ["toolgate-trust"]);
    let toolgate = named(&pod["containers"], "toolgate");
    assert!(toolgate["restartPolicy"].is_null());
    assert_eq!(
        named(&toolgate["volumeMounts"], "cred-jira-token")["mountPath"],
        "/var/run/secrets/jira"
    );
    assert_eq!(
        named(&toolgate["volumeMounts"], "cred-payments-key")["mountPath"],
        "/var/run/secrets/toolgate/payments-key"
    );
    let agent = named(&pod["containers"], "agent");
    assert_eq!(
        names(&agent["volumeMounts"]),
        ["toolgate-ca-cert", "toolgate-trust"],
        "the trust bundle, and none of toolgate's credentials"
    );
    let annotations = &find(&objects, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert!(annotations["checksum/config"].is_string(), "{annotations}");
}

#[test]
fn an_existing_configmap_and_secrets_are_mounted_not_rendered() {
    let objects = objects("existing-configmap");
    assert!(objects
        .iter()
        .all(|o| o["kind"] != "ConfigMap" && o["kind"] != "Secret"));
    let pod = pod(&objects);
    assert_eq!(
        named(&pod["volumes"], "toolgate-config")["configMap"]["name"],
        "support-agent-toolgate"
    );
    assert_eq!(
        named(&pod["volumes"], "toolgate-ca-cert")["secret"]["items"][0]["key"],
        "ca.pem"
    );
    assert_eq!(
        named(&pod["volumes"], "toolgate-signing-key")["secret"]["secretName"],
        "support-agent-signing-key"
    );
    assert_eq!(
        named(&pod["volumes"], "toolgate-operator-token")["secret"],
        serde_json::json!({
            "secretName": "support-agent-operator-token",
            "items": [{ "key": "operator-token", "path": "operator-token" }],
            "defaultMode": 0o440
        })
    );
    assert_eq!(pod["serviceAccountName"], "support-agent");
}

#[test]
fn network_policy_allows_only_dns_and_tool_networks_and_metrics_are_scraped() {
    let objects = objects("explicit");
    let policy = find(&objects, "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Egress"]));
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 3, "DNS, tools, the extra rule: {egress:#?}");
    assert_eq!(
        egress[0]["ports"],
        serde_json::json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}])
    );
    assert_eq!(
        egress[1]["to"],
        serde_json::json!([{"ipBlock": {"cidr": "203.0.113.0/24"}}, {"ipBlock": {"cidr": "2001:db8::/32"}}])
    );
    assert_eq!(
        egress[1]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 443}])
    );

    let monitor = find(&objects, "ServiceMonitor");
    let service = find(&objects, "Service");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "tg-admin");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(service["spec"]["ports"][0]["name"], "tg-admin");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][k], v, "{k}");
    }
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
}

#[test]
fn named_templates_compose_toolgate_into_another_charts_workload() {
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = validate(&[
        "parent",
        chart().to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{report:#}");
    let text = std::fs::read_to_string(dir.path().join("parent.yaml")).unwrap();
    let objects = objects_in(&text);
    let set = find(&objects, "StatefulSet");
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(
        names(&pod["initContainers"]),
        ["toolgate-init", "toolgate-trust", "toolgate"]
    );
    let triage = named(&pod["containers"], "triage");
    assert_eq!(env(triage, "MODEL"), Some("small"));
    assert_eq!(
        env(triage, "SSL_CERT_FILE"),
        Some("/etc/toolgate/trust/ca-bundle.crt")
    );
    assert_eq!(pod["securityContext"]["fsGroup"], 1337);
    assert!(objects.iter().all(|o| o["kind"] != "Deployment"));
}

/// Every volume the agent's container mounts, in `pod`.
fn agent_mounts(pod: &Value, agent: &str) -> Vec<String> {
    named(&pod["containers"], agent)["volumeMounts"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|v| v["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The containers (init and regular) that mount volume `name`.
fn mounted_by(pod: &Value, name: &str) -> Vec<String> {
    let all = pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["containers"].as_array().into_iter().flatten());
    all.filter(|c| {
        c["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|v| v["name"] == name))
    })
    .map(|c| c["name"].as_str().unwrap().to_string())
    .collect()
}

const OPERATOR_VOLUMES: [&str; 3] = [
    "toolgate-operator",
    "toolgate-operator-token",
    "toolgate-state",
];

#[test]
fn the_operator_socket_token_and_state_are_mounted_into_toolgate_alone() {
    for case in [
        "default",
        "explicit",
        "transparent",
        "classic",
        "existing-configmap",
    ] {
        let objects = objects(case);
        let pod = pod(&objects);
        let agent = find(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
            ["name"]
            .as_str()
            .unwrap()
            .to_string();
        let mounts = agent_mounts(pod, &agent);
        for volume in OPERATOR_VOLUMES {
            assert!(
                !mounts.contains(&volume.to_string()),
                "{case}: the agent mounts {volume}"
            );
            assert_eq!(mounted_by(pod, volume), ["toolgate"], "{case}: {volume}");
        }
    }
    let objects = objects("default");
    let pod = pod(&objects);
    let toolgate = named(&pod["initContainers"], "toolgate");
    let mount = |name: &str| named(&toolgate["volumeMounts"], name)["mountPath"].clone();
    assert_eq!(mount("toolgate-operator"), "/var/run/toolgate");
    assert_eq!(
        mount("toolgate-operator-token"),
        "/var/run/secrets/toolgate/operator"
    );
    assert_eq!(mount("toolgate-state"), "/var/lib/toolgate");
    let token = &named(&pod["volumes"], "toolgate-operator-token")["secret"];
    assert_eq!(token["secretName"], "demo-toolgate-operator-token");
    assert_eq!(token["defaultMode"], 0o440);
    assert_eq!(
        named(&pod["volumes"], "toolgate-operator")["emptyDir"]["medium"],
        "Memory"
    );
    let secret = objects
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "demo-toolgate-operator-token")
        .expect("a generated operator token");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert!(
        secret["data"]["token"].as_str().unwrap().len() >= 64,
        "48 characters, base64"
    );

    let config = find(&objects, "ConfigMap")["data"]["toolgate.yaml"]
        .as_str()
        .unwrap();
    for key in [
        "operator: unix:/var/run/toolgate/operator.sock",
        "token_file: /var/run/secrets/toolgate/operator/token",
        "max_revocation_ttl: 30d",
        "dir: /var/lib/toolgate",
    ] {
        assert!(config.contains(key), "{key}: {config}");
    }
    // The parent chart's own workload, composed from the named templates.
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = validate(&[
        "parent",
        chart().to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{report:#}");
    let objects = objects_in(&std::fs::read_to_string(dir.path().join("parent.yaml")).unwrap());
    let pod = &find(&objects, "StatefulSet")["spec"]["template"]["spec"];
    for volume in OPERATOR_VOLUMES {
        assert!(
            !agent_mounts(pod, "triage").contains(&volume.to_string()),
            "{volume}"
        );
        assert_eq!(mounted_by(pod, volume), ["toolgate"], "{volume}");
    }
}

#[test]
fn every_operator_setting_renders_a_config_toolgate_check_accepts_and_none_is_open() {
    let dir = tempfile::tempdir().unwrap();
    for (socket, token) in [(true, true), (true, false), (false, true), (false, false)] {
        let values = dir.path().join(format!("{socket}-{token}.yaml"));
        std::fs::write(
            &values,
            format!(
                "operator: {{ socket: {{ enabled: {socket} }}, token: {{ enabled: {token} }}, maxRevocationTTL: 7d }}\nstate: {{ enabled: {socket} }}\n"
            ),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let (code, files) = validate(&[
            "config",
            chart().to_str().unwrap(),
            values.to_str().unwrap(),
            out.path().to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{files}");
        let rendered = localize(out.path());
        let config: Value = serde_yaml::from_str(&rendered).unwrap();
        assert_eq!(
            config["listen"]["operator"].is_string(),
            socket,
            "{rendered}"
        );
        assert_eq!(
            config["admin"]["token_file"].is_string(),
            token,
            "{rendered}"
        );
        assert_eq!(config["admin"]["max_revocation_ttl"], "7d");
        assert_eq!(config["state"]["dir"].is_string(), socket, "{rendered}");
        // The admin listener is on the pod IP: with no token there, /v1 is off on it.
        assert_eq!(config["listen"]["admin"], "0.0.0.0:15000");
        let check = Command::new(BINARY)
            .args(["check", "-c"])
            .arg(out.path().join("toolgate.yaml"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        assert_eq!(check.status.code(), Some(0), "{socket}/{token}: {text}");
        assert_eq!(
            text.contains("note: the operator API is off"),
            !socket && !token,
            "{text}"
        );
    }
}

#[test]
fn require_task_token_is_a_chart_value_rendered_into_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "config: { chain: { require_task_token: true, max_actions: 32 } }\n",
    )
    .unwrap();
    let (code, files) = validate(&[
        "config",
        chart().to_str().unwrap(),
        values.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{files}");
    let rendered = std::fs::read_to_string(dir.path().join("toolgate.yaml")).unwrap();
    let config: Value = serde_yaml::from_str(&rendered).unwrap();
    assert_eq!(config["chain"]["require_task_token"], true, "{rendered}");
    assert_eq!(config["chain"]["max_actions"], 32);
    // Off unless asked for: the default renders no chain section at all.
    let objects = objects("default");
    let default = find(&objects, "ConfigMap")["data"]["toolgate.yaml"]
        .as_str()
        .unwrap();
    assert!(!default.contains("require_task_token"), "{default}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child process it holds when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HTTPS classified by default: the default values generate the interception CA (kept across
/// upgrades), render `tls.ca`, give the agent only its certificate in a trust bundle with the
/// system roots — and a real HTTPS client (Python requests, as the agent would run it, with the
/// variables the chart sets) reaches an action inside TLS through the real toolgate serving
/// the rendered configuration: `POST https://httpbin.org/post` is classified as
/// `request.post` and denied by the default policy, never decided by host alone.
#[test]
fn default_values_give_the_agent_a_ca_bundle_and_https_is_classified_into_actions() {
    let objects = objects("default");
    let pod = pod(&objects);
    assert_eq!(
        names(&pod["initContainers"]),
        ["toolgate-trust", "toolgate"]
    );
    let agent = named(&pod["containers"], "agent");
    for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        assert_eq!(
            env(agent, var),
            Some("/etc/toolgate/trust/ca-bundle.crt"),
            "{var}"
        );
    }
    assert_eq!(
        env(agent, "NODE_EXTRA_CA_CERTS"),
        Some("/etc/toolgate/ca-cert/ca.crt")
    );
    assert_eq!(
        named(&pod["volumes"], "toolgate-ca-cert")["secret"]["items"],
        serde_json::json!([{ "key": "tls.crt", "path": "ca.crt" }]),
        "the certificate alone, never the key"
    );
    let secret = objects
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "demo-toolgate-ca")
        .expect("a generated CA");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );

    // The rendered configuration, served for real on free ports, with the generated CA.
    let dir = tempfile::tempdir().unwrap();
    let (code, files) = validate(&[
        "config",
        chart().to_str().unwrap(),
        "-",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{files}");
    localize(dir.path());
    let yaml = dir.path().join("toolgate.yaml");
    let mut config: Value = serde_yaml::from_str(&std::fs::read_to_string(&yaml).unwrap()).unwrap();
    assert_eq!(
        config["tls"]["ca"]["cert"]
            .as_str()
            .map(|p| p.ends_with("demo-toolgate-ca/tls.crt")),
        Some(true),
        "{config:#}"
    );
    let (proxy, admin) = (free_port(), free_port());
    config["listen"]["proxy"] = format!("127.0.0.1:{proxy}").into();
    config["listen"]["admin"] = format!("127.0.0.1:{admin}").into();
    std::fs::write(&yaml, serde_yaml::to_string(&config).unwrap()).unwrap();
    let _toolgate = Running(
        Command::new(BINARY)
            .args(["run", "-c"])
            .arg(&yaml)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", proxy)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "toolgate did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The trust step's bundle, built as the pod builds it: system roots + the CA certificate.
    let ca_cert = dir.path().join("secrets/demo-toolgate-ca/tls.crt");
    let bundle = dir.path().join("ca-bundle.crt");
    let roots = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    std::fs::write(&bundle, [roots, std::fs::read(&ca_cert).unwrap()].concat()).unwrap();
    let agent = r#"
import json, requests
r = requests.post("https://httpbin.org/post", json={"a": 1}, timeout=20)
print(json.dumps({"status": r.status_code, "body": r.json()}))
"#;
    let out = Command::new("python3")
        .args(["-c", agent])
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy}"))
        .env("REQUESTS_CA_BUNDLE", &bundle)
        .env("NO_PROXY", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], 403, "{answer:#}");
    assert_eq!(answer["body"]["action"], "request.post", "{answer:#}");
    // The same client trusting only the system roots refuses toolgate's certificate: the
    // bundle is what makes interception work, and nothing else does.
    let out = Command::new("python3")
        .args(["-c", agent])
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy}"))
        .env("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
        .env("NO_PROXY", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ca_can_be_opted_out_of_and_then_the_agent_gets_no_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "ca: { enabled: false }\n").unwrap();
    let (code, files) = validate(&[
        "config",
        chart().to_str().unwrap(),
        values.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{files}");
    let files: Value = files;
    assert!(
        files["secrets"].get("demo-toolgate-ca").is_none(),
        "{files}"
    );
    let config = std::fs::read_to_string(dir.path().join("toolgate.yaml")).unwrap();
    assert!(!config.contains("ca:"), "{config}");
}

/// The injector: a Deployment running `toolgate inject` with the rendered configuration and
/// the generated certificate, a Service, and a MutatingWebhookConfiguration whose two webhooks
/// select opted-in pods and labelled namespaces, fail closed, and trust the generated CA —
/// which the real binary, given the chart's own Secret and ConfigMap, serves under the
/// Service's name.
#[test]
fn injector_mode_renders_a_webhook_the_real_binary_serves_with_the_charts_certificate() {
    let objects = objects("injector");
    assert!(objects
        .iter()
        .all(|o| o["kind"] != "ConfigMap" || o["metadata"]["name"] == "demo-toolgate-injector"));
    let hook = find(&objects, "MutatingWebhookConfiguration");
    let webhooks = hook["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 2);
    for w in webhooks {
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(w["rules"][0]["operations"], serde_json::json!(["CREATE"]));
        assert_eq!(
            w["clientConfig"]["service"]["name"],
            "demo-toolgate-injector"
        );
        let never = &w["namespaceSelector"]["matchExpressions"][1];
        assert_eq!(never["key"], "kubernetes.io/metadata.name");
        assert!(
            never["values"]
                .as_array()
                .unwrap()
                .contains(&"agents".into()),
            "its own namespace"
        );
    }
    assert_eq!(webhooks[0]["clientConfig"]["service"]["path"], "/inject");
    assert_eq!(
        webhooks[0]["objectSelector"]["matchLabels"]["toolgate.io/inject"],
        "true"
    );
    assert_eq!(
        webhooks[1]["clientConfig"]["service"]["path"],
        "/inject/namespace"
    );
    assert_eq!(
        webhooks[1]["namespaceSelector"]["matchExpressions"][0],
        serde_json::json!({ "key": "toolgate.io/inject", "operator": "In", "values": ["enabled"] })
    );
    let secret = objects
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "demo-toolgate-injector-tls")
        .unwrap();
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        webhooks[0]["clientConfig"]["caBundle"],
        secret["data"]["ca.crt"]
    );
    let deployment = find(&objects, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "inject");
    assert_eq!(container["securityContext"]["runAsUser"], 1337);
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );

    // The chart's own certificate and configuration, served by the real binary.
    let dir = tempfile::tempdir().unwrap();
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.path().join(key), b64(&secret["data"][key])).unwrap();
    }
    let injector_yaml = find(&objects, "ConfigMap")["data"]["injector.yaml"]
        .as_str()
        .unwrap();
    std::fs::write(dir.path().join("injector.yaml"), injector_yaml).unwrap();
    let port = free_port();
    let _webhook = Running(
        Command::new(BINARY)
            .arg("inject")
            .arg("-c")
            .arg(dir.path().join("injector.yaml"))
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let host = "demo-toolgate-injector.agents.svc";
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&b64(&webhooks[0]["clientConfig"]["caBundle"])).unwrap(),
        )
        .resolve(host, format!("127.0.0.1:{port}").parse().unwrap())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let review: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(ROOT).join("tests/inject/reviews/existing-init-env-volumes.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let answer: Value = loop {
        match client
            .post(format!("https://{host}:{port}/inject"))
            .header("content-type", "application/json")
            .body(review.to_string())
            .send()
        {
            Ok(r) => break r.json().unwrap(),
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    assert_eq!(answer["response"]["allowed"], true, "{answer:#}");
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
}

#[test]
fn injector_mode_with_cert_manager_asks_it_for_the_certificate_and_the_ca_bundle() {
    let objects = objects("injector-cert-manager");
    assert!(
        objects.iter().all(|o| o["kind"] != "Secret"),
        "no generated certificate"
    );
    let certificate = find(&objects, "Certificate");
    assert_eq!(
        certificate["spec"]["secretName"],
        "demo-toolgate-injector-tls"
    );
    assert!(certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .contains(&"demo-toolgate-injector.agents.svc".into()));
    assert_eq!(
        certificate["spec"]["issuerRef"]["name"],
        "demo-toolgate-injector"
    );
    assert!(find(&objects, "Issuer")["spec"]["selfSigned"].is_object());
    let hook = find(&objects, "MutatingWebhookConfiguration");
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "agents/demo-toolgate-injector"
    );
    assert!(hook["webhooks"][0]["clientConfig"]
        .get("caBundle")
        .is_none());
    assert_eq!(find(&objects, "Deployment")["spec"]["replicas"], 3);
}

/// What the injector adds to a pod is exactly what the sidecar mode renders: the chart's own
/// Deployment, stripped of toolgate, goes through the real webhook configured by the chart's
/// injector mode (same values otherwise), and comes back with the same init containers,
/// volumes, environment and mounts.
#[test]
fn the_injector_adds_exactly_what_the_sidecar_mode_renders() {
    let sidecar_mode = objects("default");
    let rendered = pod(&sidecar_mode).clone();
    // The injector's configuration for the same values.
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "agent: { enabled: false }\ninjector: { enabled: true, target: demo-toolgate, certManager: { enabled: false } }\n",
    )
    .unwrap();
    let (code, report) = validate(&[
        "objects",
        chart().to_str().unwrap(),
        values.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{report}");
    let injector = objects_in(&std::fs::read_to_string(dir.path().join("objects.yaml")).unwrap());
    let injector_yaml = find(&injector, "ConfigMap")["data"]["injector.yaml"]
        .as_str()
        .unwrap();
    std::fs::write(dir.path().join("injector.yaml"), injector_yaml).unwrap();

    // The agent's pod as its owner wrote it: the chart's pod without toolgate's pieces.
    let mut bare = rendered.clone();
    let ours = |v: &Value| v["name"].as_str().unwrap().starts_with("toolgate");
    bare.as_object_mut().unwrap().remove("initContainers");
    bare.as_object_mut().unwrap().remove("securityContext");
    let volumes: Vec<Value> = bare["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| !ours(v))
        .cloned()
        .collect();
    bare["volumes"] = Value::Array(volumes);
    let agent = bare["containers"][0].as_object_mut().unwrap();
    agent.remove("env");
    agent.remove("volumeMounts");
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "e911857d-c318-11e8-bbad-025000000001",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "operation": "CREATE", "namespace": "agents",
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "generateName": "demo-", "labels": { "toolgate.io/inject": "true" } },
                "spec": bare,
            }
        }
    });
    let answer = inject_through_the_binary(dir.path(), &review);
    let injected = &answer["spec"];

    let without_agent_id = |c: &Value| {
        let mut c = c.clone();
        if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
            env.retain(|e| e["name"] != "TOOLGATE_AGENT_ID");
        }
        c
    };
    let init: Vec<Value> = injected["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(without_agent_id)
        .collect();
    assert_eq!(Value::Array(init), rendered["initContainers"]);
    assert_eq!(injected["volumes"], rendered["volumes"]);
    assert_eq!(
        injected["containers"][0]["env"],
        rendered["containers"][0]["env"]
    );
    assert_eq!(
        injected["containers"][0]["volumeMounts"],
        rendered["containers"][0]["volumeMounts"]
    );
    assert_eq!(
        injected["securityContext"]["fsGroup"],
        rendered["securityContext"]["fsGroup"]
    );
}

/// Serve `dir/injector.yaml` with the real `toolgate inject` (a test certificate), POST
/// `review` to `/inject`, and apply the patch it answers with (PyPI jsonpatch, validated for
/// Kubernetes 1.29 and 1.33 by tests/inject/apply.py); the patched pod.
fn inject_through_the_binary(dir: &Path, review: &Value) -> Value {
    use base64::Engine as _;
    let ca = support::TestCa::new();
    std::fs::write(dir.join("tls.crt"), ca.leaf_pem()).unwrap();
    std::fs::write(dir.join("tls.key"), ca.leaf_key_pem()).unwrap();
    let port = free_port();
    let _webhook = Running(
        Command::new(BINARY)
            .arg("inject")
            .arg("-c")
            .arg(dir.join("injector.yaml"))
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let answer: Value = loop {
        match client
            .post(format!("https://localhost:{port}/inject"))
            .header("content-type", "application/json")
            .body(review.to_string())
            .send()
        {
            Ok(r) => break r.json().unwrap(),
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    let response = &answer["response"];
    assert_eq!(response["allowed"], true, "{answer:#}");
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut py = Command::new("python3")
        .arg(Path::new(ROOT).join("tests/inject/apply.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::json!({ "pod": review["request"]["object"], "patch": patch });
    std::io::Write::write_all(&mut py.stdin.take().unwrap(), input.to_string().as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["errors"], serde_json::json!([]), "{result:#}");
    result["pod"].clone()
}
