use serde_json::{json, Value};

use super::review::{answer, decide, Selection, Verdict};
use super::template::Template;

fn template() -> Template {
    Template::parse(
        "image: ghcr.io/toolgate/toolgate:0.1.0\n\
         ca: { secret: toolgate-ca }\n\
         operator: { socket_dir: /var/run/toolgate, token_secret: toolgate-operator-token }\n\
         state_dir: /var/lib/toolgate\n",
        "injector.yaml",
    )
    .unwrap()
}

fn pod(labels: Value, annotations: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "generateName": "agent-", "labels": labels, "annotations": annotations },
        "spec": spec,
    })
}

fn agent() -> Value {
    json!({ "containers": [{ "name": "agent", "image": "python:3.12-slim" }] })
}

fn ops(v: Verdict) -> Vec<Value> {
    match v {
        Verdict::Patched(ops) => ops,
        other => panic!("not patched: {other:?}"),
    }
}

#[test]
fn a_pod_that_does_not_opt_in_is_untouched() {
    let t = template();
    let p = pod(json!({}), json!({}), agent());
    assert_eq!(
        decide(&t, Selection::OptIn, &p, "agents"),
        Verdict::Untouched(None)
    );
    let p = pod(json!({}), json!({ "toolgate.io/inject": "false" }), agent());
    assert_eq!(
        decide(&t, Selection::Namespace, &p, "agents"),
        Verdict::Untouched(None)
    );
    // The positive control: the same pod, opted in, is patched.
    let p = pod(json!({ "toolgate.io/inject": "true" }), json!({}), agent());
    assert!(matches!(
        decide(&t, Selection::OptIn, &p, "agents"),
        Verdict::Patched(_)
    ));
    let p = pod(json!({}), json!({}), agent());
    assert!(matches!(
        decide(&t, Selection::Namespace, &p, "agents"),
        Verdict::Patched(_)
    ));
}

#[test]
fn patches_are_deterministic() {
    let t = template();
    let p = pod(json!({ "toolgate.io/inject": "true" }), json!({}), agent());
    let a = serde_json::to_string(&ops(decide(&t, Selection::OptIn, &p, "agents"))).unwrap();
    let b = serde_json::to_string(&ops(decide(&t, Selection::OptIn, &p, "agents"))).unwrap();
    assert_eq!(a, b);
}

#[test]
fn an_injected_pod_is_left_alone() {
    let t = template();
    let p = pod(
        json!({ "toolgate.io/inject": "true" }),
        json!({ "toolgate.io/injected": "true" }),
        agent(),
    );
    assert_eq!(
        decide(&t, Selection::OptIn, &p, "agents"),
        Verdict::Untouched(None)
    );
}

#[test]
fn uid_or_gid_1337_is_refused_and_unset_ones_are_set() {
    let t = template();
    for (spec, says) in [
        (
            json!({ "securityContext": { "runAsUser": 1337 }, "containers": [{ "name": "agent", "image": "a" }] }),
            "runs as uid 1337",
        ),
        (
            json!({ "containers": [{ "name": "agent", "image": "a", "securityContext": { "runAsGroup": 1337 } }] }),
            "runs as gid 1337",
        ),
        (
            json!({ "initContainers": [{ "name": "fetch", "image": "a", "securityContext": { "runAsUser": 1337 } }],
                    "containers": [{ "name": "agent", "image": "a" }] }),
            "container \"fetch\" runs as uid 1337",
        ),
    ] {
        let p = pod(json!({ "toolgate.io/inject": "true" }), json!({}), spec);
        match decide(&t, Selection::OptIn, &p, "agents") {
            Verdict::Refused(m) => assert!(m.contains(says), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    let p = pod(json!({ "toolgate.io/inject": "true" }), json!({}), agent());
    let ops = ops(decide(&t, Selection::OptIn, &p, "agents"));
    assert!(ops.contains(&json!({
        "op": "add", "path": "/spec/containers/0/securityContext",
        "value": { "runAsUser": 1000, "runAsGroup": 1000 }
    })));
}

#[test]
fn bad_annotations_and_host_network_under_transparent_capture_are_refused() {
    let t = template();
    for (annotations, spec, says) in [
        (
            json!({ "toolgate.io/capture": "ebpf" }),
            agent(),
            "must be explicit or transparent",
        ),
        (
            json!({ "toolgate.io/config": "Not_A_Name" }),
            agent(),
            "is not a ConfigMap name",
        ),
        (
            json!({ "toolgate.io/capture": "transparent" }),
            json!({ "hostNetwork": true, "containers": [{ "name": "agent", "image": "a" }] }),
            "hostNetwork",
        ),
        (
            json!({}),
            json!({ "volumes": [{ "name": "toolgate-config", "emptyDir": {} }], "containers": [{ "name": "agent", "image": "a" }] }),
            "already has a volume named \"toolgate-config\"",
        ),
    ] {
        let p = pod(json!({ "toolgate.io/inject": "true" }), annotations, spec);
        match decide(&t, Selection::OptIn, &p, "agents") {
            Verdict::Refused(m) => assert!(m.contains(says), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn the_review_answers_with_the_request_uid_and_a_base64_json_patch() {
    use base64::Engine as _;
    let t = template();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "operation": "CREATE", "namespace": "agents",
            "object": pod(json!({ "toolgate.io/inject": "true" }), json!({}), agent()),
        }
    });
    let out = answer(&t, Selection::OptIn, &serde_json::to_vec(&review).unwrap()).unwrap();
    let r = &out["response"];
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    assert!(!ops.is_empty());
    assert!(answer(&t, Selection::OptIn, b"{}").is_err());
    assert!(answer(&t, Selection::OptIn, b"not json").is_err());
}

#[test]
fn a_bad_injector_configuration_names_every_field() {
    let err = Template::parse(
        "image: x\nconfig_map: Bad_Name\nagent_uid: 1337\nstate_dir: relative\nunknown: 1\n",
        "injector.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown"), "{err}");
    let err = Template::parse(
        "image: x\nconfig_map: Bad_Name\nagent_uid: 1337\nstate_dir: relative\n",
        "injector.yaml",
    )
    .unwrap_err()
    .to_string();
    for says in ["config_map", "agent_uid: 1337", "state_dir"] {
        assert!(err.contains(says), "{says}: {err}");
    }
}

#[test]
fn every_copy_of_a_proxy_variable_the_agent_set_becomes_toolgates() {
    let t = template();
    let spec = json!({ "containers": [{
        "name": "agent", "image": "a",
        "env": [
            { "name": "HTTPS_PROXY", "value": "http://evil.example:3128" },
            { "name": "KEEP", "value": "1" },
            { "name": "HTTPS_PROXY", "value": "http://evil.example:3128" }
        ]
    }] });
    let p = pod(json!({ "toolgate.io/inject": "true" }), json!({}), spec);
    let ops = ops(decide(&t, Selection::OptIn, &p, "agents"));
    for i in [0, 2] {
        assert!(
            ops.contains(&json!({
                "op": "replace", "path": format!("/spec/containers/0/env/{i}"),
                "value": { "name": "HTTPS_PROXY", "value": "http://127.0.0.1:15001" }
            })),
            "{i}: {ops:#?}"
        );
    }
    assert!(!ops.iter().any(|o| o["path"] == "/spec/containers/0/env/1"));
}
