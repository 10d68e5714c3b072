//! One AdmissionReview (admission.k8s.io/v1): decide whether the pod is injected, and answer
//! with an RFC 6902 JSON patch in a stable order, an untouched allow, or a refusal
//! (`allowed: false`) whose message says what to change.

use base64::Engine as _;
use serde_json::{json, Value};

use super::pod::{self, Choice, CONTAINERS};
use super::template::{is_object_name, Capture, Template, PROXY_UID};

/// Opt in (label or annotation `"true"`), or opt out under a labelled namespace (`"false"`).
pub const INJECT: &str = "toolgate.io/inject";
/// Set on every injected pod: a pod that carries it is left alone.
pub const INJECTED: &str = "toolgate.io/injected";
/// The ConfigMap holding the pod's `toolgate.yaml`.
pub const CONFIG: &str = "toolgate.io/config";
/// The capture mode: `explicit` or `transparent`.
pub const CAPTURE: &str = "toolgate.io/capture";

/// Which pods a webhook path injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// `/inject`: pods that opt in with `toolgate.io/inject: "true"` (label or annotation).
    OptIn,
    /// `/inject/namespace`: every pod of a labelled namespace unless it says `"false"`.
    Namespace,
}

/// An AdmissionReview that cannot be answered (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not an admission.k8s.io/v1 AdmissionReview with a request and its uid")]
    Shape,
}

/// What is done with one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Allowed as it is; the warning says why, when that is worth telling.
    Untouched(Option<String>),
    /// Allowed with these JSON patch operations.
    Patched(Vec<Value>),
    /// Refused: the message names the field and what to change.
    Refused(String),
}

/// Answer the AdmissionReview `body` for the pods `selection` injects.
pub fn answer(template: &Template, selection: Selection, body: &[u8]) -> Result<Value, BadReview> {
    let review: Value = serde_json::from_slice(body)?;
    let request = review.get("request").ok_or(BadReview::Shape)?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(BadReview::Shape)?;
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1") {
        return Err(BadReview::Shape);
    }
    let is_pod_create = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
        && request.get("operation").and_then(Value::as_str) == Some("CREATE")
        && request.get("subResource").is_none_or(Value::is_null);
    let verdict = match request.get("object") {
        Some(pod) if is_pod_create => {
            let namespace = request
                .get("namespace")
                .and_then(Value::as_str)
                .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
                .unwrap_or("default");
            decide(template, selection, pod, namespace)
        }
        _ => Verdict::Untouched(None),
    };
    let response = match verdict {
        Verdict::Untouched(None) => json!({ "uid": uid, "allowed": true }),
        Verdict::Untouched(Some(warning)) => {
            json!({ "uid": uid, "allowed": true, "warnings": [warning] })
        }
        Verdict::Patched(ops) => {
            let patch = serde_json::to_vec(&ops)?;
            json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            })
        }
        Verdict::Refused(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": { "code": 403, "reason": "Forbidden", "message": message },
        }),
    };
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

fn marker<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    let escaped = key.replace('~', "~0").replace('/', "~1");
    pod.pointer(&format!("/metadata/annotations/{escaped}"))
        .or_else(|| pod.pointer(&format!("/metadata/labels/{escaped}")))
        .and_then(Value::as_str)
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    let escaped = key.replace('~', "~0").replace('/', "~1");
    pod.pointer(&format!("/metadata/annotations/{escaped}"))
        .and_then(Value::as_str)
}

/// A JSON pointer segment for `key`.
fn segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn list<'a>(pod: &'a Value, pointer: &str) -> &'a [Value] {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn name_of(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or("")
}

/// Decide what to do with `pod`, created in `namespace`.
pub fn decide(template: &Template, selection: Selection, pod: &Value, namespace: &str) -> Verdict {
    let wanted = match (selection, marker(pod, INJECT)) {
        (_, Some("false")) => false,
        (Selection::OptIn, Some("true")) => true,
        (Selection::OptIn, _) => false,
        (Selection::Namespace, _) => true,
    };
    if !wanted {
        return Verdict::Untouched(None);
    }
    if annotation(pod, INJECTED).is_some() {
        return Verdict::Untouched(None);
    }
    let present: Vec<&str> = list(pod, "/spec/initContainers")
        .iter()
        .chain(list(pod, "/spec/containers"))
        .map(name_of)
        .filter(|n| CONTAINERS.contains(n))
        .collect();
    if !present.is_empty() {
        return Verdict::Untouched(Some(format!(
            "toolgate: the pod already has container {}; not injected again",
            present.join(", ")
        )));
    }
    match patch(template, pod, namespace) {
        Ok(ops) => Verdict::Patched(ops),
        Err(message) => Verdict::Refused(format!("toolgate cannot be injected: {message}")),
    }
}

/// The settings `pod` asks for through its annotations, or why they cannot be used.
fn choose<'a>(template: &'a Template, pod: &Value, namespace: &str) -> Result<Choice<'a>, String> {
    let config_map = match annotation(pod, CONFIG) {
        None => template.config_map.clone(),
        Some(name) if is_object_name(name) => name.to_string(),
        Some(name) => {
            return Err(format!(
                "annotation {CONFIG}: {name:?} is not a ConfigMap name"
            ))
        }
    };
    let capture = match annotation(pod, CAPTURE) {
        None => template.capture,
        Some(mode) => Capture::parse(mode).ok_or_else(|| {
            format!("annotation {CAPTURE}: {mode:?} must be explicit or transparent")
        })?,
    };
    let account = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let group = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_i64)
        .filter(|g| *g != PROXY_UID);
    Ok(Choice {
        template,
        config_map,
        capture,
        agent_id: format!(
            "spiffe://{}/ns/{namespace}/sa/{account}",
            template.trust_domain
        ),
        group,
    })
}

/// The uid and gid a container runs as: its own securityContext's, else the pod's.
fn identity(pod: &Value, container: &Value, field: &str) -> Option<i64> {
    container
        .pointer(&format!("/securityContext/{field}"))
        .and_then(Value::as_i64)
        .or_else(|| {
            pod.pointer(&format!("/spec/securityContext/{field}"))
                .and_then(Value::as_i64)
        })
}

/// Operations that make container `at` (e.g. `/spec/containers/0`) run as a uid and gid of
/// its own — never 1337, which transparent capture exempts.
fn run_as(
    template: &Template,
    pod: &Value,
    container: &Value,
    at: &str,
    ops: &mut Vec<Value>,
) -> Result<(), String> {
    let name = name_of(container);
    let mut set = serde_json::Map::new();
    for (field, what) in [("runAsUser", "uid"), ("runAsGroup", "gid")] {
        match identity(pod, container, field) {
            Some(PROXY_UID) => {
                return Err(format!(
                    "container {name:?} runs as {what} {PROXY_UID} ({field}), toolgate's own: \
                     capture exempts it, so the container's traffic would bypass toolgate; \
                     run it as another {what}"
                ))
            }
            Some(_) => {}
            None => {
                set.insert(field.to_string(), json!(template.agent_uid));
            }
        }
    }
    if set.is_empty() {
        return Ok(());
    }
    match container.get("securityContext") {
        Some(Value::Object(_)) => {
            for (field, value) in set {
                ops.push(json!({ "op": "add", "path": format!("{at}/securityContext/{field}"), "value": value }));
            }
        }
        _ => {
            ops.push(json!({ "op": "add", "path": format!("{at}/securityContext"), "value": set }))
        }
    }
    Ok(())
}

/// Operations that add `items` (each with a unique `name`) to the list at `at` of `current`:
/// an item whose name is there already replaces it — every time it is there, so a duplicate
/// the container's runtime would read last cannot win — and the others are appended.
fn merge_named(current: Option<&[Value]>, at: &str, items: Vec<Value>, ops: &mut Vec<Value>) {
    let Some(current) = current else {
        if !items.is_empty() {
            ops.push(json!({ "op": "add", "path": at, "value": items }));
        }
        return;
    };
    for item in items {
        let mut found = false;
        for (i, c) in current.iter().enumerate() {
            if name_of(c) == name_of(&item) {
                found = true;
                ops.push(json!({ "op": "replace", "path": format!("{at}/{i}"), "value": item }));
            }
        }
        if !found {
            ops.push(json!({ "op": "add", "path": format!("{at}/-"), "value": item }));
        }
    }
}

/// The JSON patch that injects toolgate into `pod`, or why it cannot be.
pub fn patch(template: &Template, pod: &Value, namespace: &str) -> Result<Vec<Value>, String> {
    let choice = choose(template, pod, namespace)?;
    if pod.pointer("/spec/os/name").and_then(Value::as_str) == Some("windows") {
        return Err("a Windows pod: toolgate's sidecar is a Linux container".into());
    }
    if choice.capture == Capture::Transparent
        && pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true)
    {
        return Err(
            "hostNetwork: true with transparent capture would rewrite the node's iptables; \
             use annotation toolgate.io/capture: explicit, or a pod network"
                .into(),
        );
    }
    let volumes = pod::volumes(&choice);
    let existing = list(pod, "/spec/volumes");
    if let Some(v) = volumes
        .iter()
        .find(|v| existing.iter().any(|e| name_of(e) == name_of(v)))
    {
        return Err(format!(
            "the pod already has a volume named {:?}",
            name_of(v)
        ));
    }
    let containers = list(pod, "/spec/containers");
    if containers.is_empty() {
        return Err("the pod has no containers".into());
    }
    let mounts = pod::agent_mounts(&choice);
    for c in containers {
        for m in list(c, "/volumeMounts") {
            let path = m.get("mountPath").and_then(Value::as_str).unwrap_or("");
            if path.starts_with("/etc/toolgate") && !mounts.is_empty() {
                return Err(format!(
                    "container {:?} mounts {path}, where toolgate puts the agent's trust bundle",
                    name_of(c)
                ));
            }
        }
    }

    let mut ops = Vec::new();
    // Mark the pod first: what was chosen, and that it is done.
    let mut marks = serde_json::Map::new();
    marks.insert(INJECTED.to_string(), json!("true"));
    marks.insert(CAPTURE.to_string(), json!(choice.capture.as_str()));
    marks.insert(CONFIG.to_string(), json!(choice.config_map));
    match pod.pointer("/metadata/annotations") {
        Some(Value::Object(current)) => {
            for (key, value) in marks {
                let op = if current.contains_key(&key) {
                    "replace"
                } else {
                    "add"
                };
                ops.push(json!({ "op": op, "path": format!("/metadata/annotations/{}", segment(&key)), "value": value }));
            }
        }
        _ => ops.push(json!({ "op": "add", "path": "/metadata/annotations", "value": marks })),
    }
    // Secrets are group-readable by the pod's fsGroup: toolgate's gid unless the pod has one.
    match pod.pointer("/spec/securityContext") {
        Some(Value::Object(sc)) if sc.contains_key("fsGroup") => {}
        Some(Value::Object(_)) => ops.push(
            json!({ "op": "add", "path": "/spec/securityContext/fsGroup", "value": PROXY_UID }),
        ),
        _ => ops.push(
            json!({ "op": "add", "path": "/spec/securityContext", "value": { "fsGroup": PROXY_UID } }),
        ),
    }
    // The pod's own init containers keep their places after toolgate's: their uids first,
    // while their indices are still theirs.
    let inits = list(pod, "/spec/initContainers");
    for (i, c) in inits.iter().enumerate() {
        run_as(
            template,
            pod,
            c,
            &format!("/spec/initContainers/{i}"),
            &mut ops,
        )?;
    }
    let ours = pod::init_containers(&choice);
    if pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .is_none()
    {
        ops.push(json!({ "op": "add", "path": "/spec/initContainers", "value": ours }));
    } else {
        for (i, c) in ours.into_iter().enumerate() {
            ops.push(
                json!({ "op": "add", "path": format!("/spec/initContainers/{i}"), "value": c }),
            );
        }
    }
    for (i, c) in containers.iter().enumerate() {
        let at = format!("/spec/containers/{i}");
        run_as(template, pod, c, &at, &mut ops)?;
        let env = c.get("env").and_then(Value::as_array).map(Vec::as_slice);
        merge_named(env, &format!("{at}/env"), pod::agent_env(&choice), &mut ops);
        let current = c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .map(Vec::as_slice);
        merge_named(
            current,
            &format!("{at}/volumeMounts"),
            mounts.clone(),
            &mut ops,
        );
    }
    let current = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .map(Vec::as_slice);
    merge_named(current, "/spec/volumes", volumes, &mut ops);
    Ok(ops)
}
