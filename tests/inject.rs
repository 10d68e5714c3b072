//! `toolgate inject`, the admission webhook, through the real binary over TLS: real
//! AdmissionReview JSON (as the API server sends it, after its own defaulting and the service
//! account plugin) for several real-world pods, answered with JSON patches that an independent
//! RFC 6902 implementation (PyPI jsonpatch) applies and `kubernetes-validate --strict` accepts
//! for Kubernetes 1.29 and 1.33 (tests/inject/apply.py); pods that must not be injected are
//! refused or left alone; the serving certificate is read again when its files change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use support::TestCa;

/// What the chart's injector mode renders for `toolgate inject -c`.
const INJECTOR: &str = "\
image: registry.example.com/toolgate:0.1.0
config_map: toolgate-config
capture: explicit
ca: { secret: toolgate-ca }
operator: { socket_dir: /var/run/toolgate, token_secret: toolgate-operator-token, token_key: token }
state_dir: /var/lib/toolgate
";

/// A running `toolgate inject` with its certificate files; killed on drop.
struct Webhook {
    addr: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl Webhook {
    fn start(ca: &TestCa) -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("injector.yaml"), INJECTOR).unwrap();
        write_cert(dir.path(), ca);
        let mut child = Command::new(support::binary())
            .arg("inject")
            .arg("-c")
            .arg(dir.path().join("injector.yaml"))
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .args(["--listen", "127.0.0.1:0"])
            .env("TOOLGATE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("inject.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("toolgate inject listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Webhook { addr, dir, child }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("inject.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.addr.rsplit(':').next().unwrap()
        )
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_cert(dir: &Path, ca: &TestCa) {
    // Written beside and renamed over, as a kubelet updates a mounted Secret.
    for (name, pem) in [("tls.key", ca.leaf_key_pem()), ("tls.crt", ca.leaf_pem())] {
        let tmp = dir.join(format!(".{name}"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A client that trusts `ca` alone, as the API server trusts the webhook's caBundle.
fn client(ca: &TestCa) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn fixture(name: &str) -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/inject/reviews/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// POST `review` to `path`; the AdmissionReview answered.
fn post(hook: &Webhook, client: &reqwest::blocking::Client, path: &str, review: &Value) -> Value {
    let resp = client
        .post(hook.url(path))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(review).unwrap())
        .send()
        .unwrap_or_else(|e| panic!("{e}: {}", hook.logs()));
    assert_eq!(resp.status(), 200, "{}", hook.logs());
    let answer: Value = resp.json().unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    answer["response"].clone()
}

/// Apply `response`'s patch to the reviewed pod with PyPI jsonpatch and validate the result
/// for Kubernetes 1.29 and 1.33; the patched pod.
fn patched(review: &Value, response: &Value) -> Value {
    assert_eq!(response["allowed"], true, "{response:#}");
    assert_eq!(response["patchType"], "JSONPatch");
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut py = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject/apply.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({ "pod": review["request"]["object"], "patch": patch });
    py.stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&input).unwrap())
        .unwrap();
    let out = py.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "run scripts/test.sh, which installs jsonpatch and kubernetes-validate: {stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["errors"], json!([]), "{:#}", result["pod"]);
    result["pod"].clone()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:#}"))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

const OPERATOR_VOLUMES: [&str; 4] = [
    "toolgate-operator",
    "toolgate-operator-token",
    "toolgate-state",
    "toolgate-ca",
];

/// Nothing of toolgate's own — operator socket, token, state, the CA key — is mounted into a
/// container of the agent's.
fn agent_mounts_nothing_of_toolgates(pod: &Value) {
    for c in pod["spec"]["containers"].as_array().unwrap() {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            assert!(
                !OPERATOR_VOLUMES.contains(&m["name"].as_str().unwrap()),
                "{} mounts {}",
                c["name"],
                m["name"]
            );
        }
    }
}

#[test]
fn a_pod_with_init_containers_env_and_volumes_gets_the_sidecar_first_and_keeps_its_own() {
    let ca = TestCa::new();
    let hook = Webhook::start(&ca);
    let client = client(&ca);
    let review = fixture("existing-init-env-volumes");
    let pod = patched(&review, &post(&hook, &client, "/inject", &review));
    let spec = &pod["spec"];
    // toolgate's trust step and native sidecar first, then the pod's own init container.
    assert_eq!(
        names(&spec["initContainers"]),
        ["toolgate-trust", "toolgate", "wait-for-db"]
    );
    let sidecar = named(&spec["initContainers"], "toolgate");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1337);
    assert_eq!(
        sidecar["args"],
        json!(["run", "-c", "/etc/toolgate/config/toolgate.yaml"])
    );
    assert_eq!(
        env(sidecar, "TOOLGATE_AGENT_ID"),
        Some("spiffe://cluster.local/ns/agents/sa/triage-agent")
    );
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    // The agent keeps its env, volumes and mounts, and gains the proxy and trust variables.
    let agent = named(&spec["containers"], "agent");
    assert_eq!(env(agent, "LOG_LEVEL"), Some("info"));
    assert!(agent["env"].as_array().unwrap().iter().any(
        |e| e["name"] == "OPENAI_API_KEY" && e["valueFrom"]["secretKeyRef"]["name"] == "openai"
    ));
    assert_eq!(env(agent, "HTTPS_PROXY"), Some("http://127.0.0.1:15001"));
    assert_eq!(env(agent, "NO_PROXY"), Some("localhost,127.0.0.1,::1"));
    assert_eq!(
        env(agent, "SSL_CERT_FILE"),
        Some("/etc/toolgate/trust/ca-bundle.crt")
    );
    assert_eq!(
        env(agent, "NODE_EXTRA_CA_CERTS"),
        Some("/etc/toolgate/ca-cert/ca.crt")
    );
    assert_eq!(
        names(&agent["volumeMounts"]),
        [
            "data",
            "cache",
            "kube-api-access-x7k2p",
            "toolgate-ca-cert",
            "toolgate-trust"
        ]
    );
    // No uid in the pod: an explicit one that is not toolgate's, so the image's USER cannot
    // make the agent 1337; the pod's own init container too.
    assert_eq!(agent["securityContext"]["runAsUser"], 1000);
    assert_eq!(agent["securityContext"]["runAsGroup"], 1000);
    assert_eq!(
        named(&spec["initContainers"], "wait-for-db")["securityContext"]["runAsUser"],
        1000
    );
    let volumes = names(&spec["volumes"]);
    assert_eq!(&volumes[..3], ["data", "cache", "kube-api-access-x7k2p"]);
    assert_eq!(
        named(&spec["volumes"], "toolgate-config")["configMap"]["name"],
        "toolgate-config"
    );
    // The agent gets the CA certificate alone, never its key.
    assert_eq!(
        named(&spec["volumes"], "toolgate-ca-cert")["secret"]["items"],
        json!([{ "key": "tls.crt", "path": "ca.crt" }])
    );
    assert_eq!(spec["securityContext"]["fsGroup"], 1337);
    agent_mounts_nothing_of_toolgates(&pod);
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["toolgate.io/injected"], "true");
    assert_eq!(annotations["toolgate.io/capture"], "explicit");
}

#[test]
fn a_restrictive_pod_under_transparent_capture_keeps_its_uid_and_gets_the_iptables_step() {
    let ca = TestCa::new();
    let hook = Webhook::start(&ca);
    let client = client(&ca);
    let review = fixture("restrictive-transparent");
    let pod = patched(&review, &post(&hook, &client, "/inject", &review));
    let spec = &pod["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["toolgate-init", "toolgate-trust", "toolgate"]
    );
    let init = named(&spec["initContainers"], "toolgate-init");
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--proxy-uid=1337"), "{args:?}");
    // The arguments are ones the real binary accepts.
    let dry = Command::new(support::binary())
        .args(&args)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(String::from_utf8_lossy(&dry.stdout)
        .lines()
        .any(|l| l == "-A TOOLGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
    // The pod's own uid and restrictions stand; no proxy variables under transparent capture.
    let agent = named(&spec["containers"], "agent");
    assert!(agent["securityContext"].get("runAsUser").is_none());
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 10001);
    assert_eq!(env(agent, "HTTP_PROXY"), None);
    assert_eq!(
        env(agent, "REQUESTS_CA_BUNDLE"),
        Some("/etc/toolgate/trust/ca-bundle.crt")
    );
    // The pod's fsGroup stays; toolgate runs in that group to read its group-readable Secrets.
    assert_eq!(spec["securityContext"]["fsGroup"], 2000);
    let sidecar = named(&spec["initContainers"], "toolgate");
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1337);
    assert_eq!(sidecar["securityContext"]["runAsGroup"], 2000);
    assert!(sidecar["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "tg-transparent" && p["containerPort"] == 15006));
    // The ConfigMap the pod named.
    assert_eq!(
        named(&spec["volumes"], "toolgate-config")["configMap"]["name"],
        "support-toolgate-config"
    );
    assert_eq!(
        env(sidecar, "TOOLGATE_AGENT_ID"),
        Some("spiffe://cluster.local/ns/agents/sa/support-agent")
    );
    agent_mounts_nothing_of_toolgates(&pod);
}

#[test]
fn an_agents_own_proxy_setting_is_replaced_in_every_container() {
    let ca = TestCa::new();
    let hook = Webhook::start(&ca);
    let client = client(&ca);
    let review = fixture("proxy-env-two-containers");
    let pod = patched(&review, &post(&hook, &client, "/inject", &review));
    let spec = &pod["spec"];
    for name in ["agent", "log-shipper"] {
        let c = named(&spec["containers"], name);
        assert_eq!(
            env(c, "HTTPS_PROXY"),
            Some("http://127.0.0.1:15001"),
            "{name}"
        );
        assert_eq!(c["securityContext"]["runAsUser"], 1000, "{name}");
        let https = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "HTTPS_PROXY")
            .count();
        assert_eq!(https, 1, "{name}: one HTTPS_PROXY, toolgate's");
    }
    assert_eq!(
        env(named(&spec["containers"], "agent"), "NODE_ENV"),
        Some("production")
    );
    assert_eq!(
        env(
            named(&spec["initContainers"], "toolgate"),
            "TOOLGATE_AGENT_ID"
        ),
        Some("spiffe://cluster.local/ns/agents/sa/default")
    );
}

#[test]
fn a_pod_asking_to_run_as_toolgates_uid_is_refused_with_the_reason() {
    let ca = TestCa::new();
    let hook = Webhook::start(&ca);
    let client = client(&ca);
    let response = post(&hook, &client, "/inject", &fixture("runs-as-1337"));
    assert_eq!(response["allowed"], false);
    assert!(response.get("patch").is_none());
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("container \"agent\" runs as uid 1337 (runAsUser), toolgate's own"),
        "{message}"
    );
    assert_eq!(response["status"]["code"], 403);
}

#[test]
fn an_injected_pod_and_a_pod_that_did_not_opt_in_are_untouched() {
    let ca = TestCa::new();
    let hook = Webhook::start(&ca);
    let client = client(&ca);
    for name in ["already-injected", "no-annotation"] {
        let response = post(&hook, &client, "/inject", &fixture(name));
        assert_eq!(response["allowed"], true, "{name}");
        assert!(response.get("patch").is_none(), "{name}: {response:#}");
    }
    // Under a labelled namespace every pod is injected — the unlabelled one included — unless
    // it says "false".
    let review = fixture("no-annotation");
    let pod = patched(&review, &post(&hook, &client, "/inject/namespace", &review));
    assert_eq!(
        names(&pod["spec"]["initContainers"]),
        ["toolgate-trust", "toolgate"]
    );
    let mut out = fixture("no-annotation");
    out["request"]["object"]["metadata"]["annotations"] = json!({ "toolgate.io/inject": "false" });
    let response = post(&hook, &client, "/inject/namespace", &out);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
}

#[test]
fn the_webhook_answers_only_over_tls_to_a_client_that_trusts_its_ca() {
    let ca = TestCa::new();
    let hook = Webhook::start(&ca);
    let (status, body) = {
        let r = client(&ca).get(hook.url("/healthz")).send().unwrap();
        (r.status(), r.text().unwrap())
    };
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"));
    // A client that trusts another CA is turned away by its own TLS check.
    let other = TestCa::new();
    assert!(client(&other).get(hook.url("/healthz")).send().is_err());
    // Plain HTTP gets no answer.
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://{}/healthz", hook.addr))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // What is not an AdmissionReview is a 400, not a crash, and the webhook keeps serving.
    let c = client(&ca);
    let bad = c
        .post(hook.url("/inject"))
        .header("content-type", "application/json")
        .body("{\"apiVersion\":\"v1\"}")
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    let too_big = c
        .post(hook.url("/inject"))
        .header("content-type", "application/json")
        .body(vec![b' '; 5 << 20])
        .send();
    assert!(too_big.is_err() || too_big.unwrap().status() == 413);
    // A new connection (the refused one is closed, by design).
    assert_eq!(
        client(&ca)
            .get(hook.url("/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let first = TestCa::new();
    let hook = Webhook::start(&first);
    assert_eq!(
        client(&first)
            .get(hook.url("/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let renewed = TestCa::new();
    write_cert(hook.dir.path(), &renewed);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client(&renewed)
            .get(hook.url("/healthz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never served the renewed certificate: {}",
            hook.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        hook.logs().contains("webhook certificate reloaded"),
        "{}",
        hook.logs()
    );
}
