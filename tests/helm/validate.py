"""Offline checks of charts/toolgate with Helm's Go SDK (PyPI helm-python-sdk) and the
Kubernetes OpenAPI schemas bundled in PyPI kubernetes-validate. Driven by tests/helm.rs.

    validate.py render CHART OUT          lint, render every values case, validate manifests
    validate.py reject CHART              bad values must fail the chart's schema
    validate.py config CHART VALUES OUT   write the rendered ConfigMap's files to OUT, and
                                          generated Secrets to OUT/secrets/NAME/KEY
    validate.py parent CHART OUT          render a parent chart that includes the named templates
    validate.py objects CHART VALUES OUT  render with VALUES, validate, write OUT/objects.yaml

Each command prints one JSON document and exits non-zero when a check fails.
"""
import base64
import json
import os
import pathlib
import shutil
import sys
import tempfile

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

RELEASE = "demo"
NAMESPACE = "agents"
# The oldest Kubernetes with native sidecars on by default, 1.33, and the newest bundled schemas.
KUBE_VERSIONS = ["1.29.0", "1.33.0", kv_utils.latest_version()]

# kubernetes-validate knows only built-in kinds. A ServiceMonitor is checked against this
# strict subset of the prometheus-operator CRD (monitoring.coreos.com/v1): the fields the
# chart renders, with the CRD's types.
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
SERVICE_MONITOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        },
                    },
                },
            },
        },
    },
}
_CM_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
# cert-manager (cert-manager.io/v1) is a CRD too: strict subsets of its Issuer and Certificate
# schemas, the fields the chart renders.
ISSUER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Issuer"},
        "metadata": _CM_METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"selfSigned": {"type": "object", "additionalProperties": False}},
            "required": ["selfSigned"],
        },
    },
}
CERTIFICATE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": _CM_METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": {"type": "array", "items": {"type": "string"}},
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                    },
                },
                "issuerRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "group": {"type": "string"},
                    },
                },
            },
        },
    },
}
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("cert-manager.io/v1", "Issuer"): ISSUER,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
}


def cases(chart):
    """(name, values) for the defaults and every ci/*-values.yaml file."""
    out = [("default", {})]
    for path in sorted(pathlib.Path(chart, "ci").glob("*-values.yaml")):
        name = path.name[: -len("-values.yaml")]
        out.append((name, helm.values_from_yaml(path.read_text())))
    return out


def render(chart_dir, values):
    with helm.Chart.load(chart_dir) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def documents(manifests):
    """Every rendered Kubernetes object, with the template it came from."""
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield template, doc


def validate_object(doc):
    """Errors of one object against Kubernetes (strict) or the custom schema of its kind."""
    custom = CUSTOM_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    if custom is not None:
        errors = jsonschema.Draft7Validator(custom).iter_errors(doc)
        return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]
    errors = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"k8s {version}: {path}: {e.message}")
        except kv_utils.SchemaNotFoundError as e:
            errors.append(f"k8s {version}: {e.message}")
    return errors


def lint_findings(chart, values):
    """Lint messages at warning level or above, for the default and the oldest version."""
    found = []
    for kube_version in (None, "v" + KUBE_VERSIONS[0]):
        report = helm.lint(chart, values, strict=True, namespace=NAMESPACE, kube_version=kube_version)
        found += [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
        found += report.get("errors") or []
    return sorted(set(found))


def cmd_render(chart, out):
    report = {"kube_versions": KUBE_VERSIONS, "cases": {}}
    ok = True
    for name, values in cases(chart):
        case = {"lint": lint_findings(chart, values), "objects": [], "errors": []}
        try:
            manifests = render(chart, values)
        except helm.HelmError as e:
            case["errors"].append(f"render: {e}")
            manifests = {}
        docs = []
        for template, doc in documents(manifests):
            docs.append(doc)
            case["objects"].append(f"{doc['kind']}/{doc['metadata']['name']}")
            case["errors"] += [f"{template}: {e}" for e in validate_object(doc)]
        pathlib.Path(out, f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        ok = ok and not case["lint"] and not case["errors"] and bool(docs)
        report["cases"][name] = case
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


# Each must fail the chart's values.schema.json: wrong types, unknown keys, bad formats.
BAD_VALUES = {
    "wrong type: workers as a string": {"sidecar": {"workers": "two"}},
    "wrong type: native as a string": {"sidecar": {"native": "yes"}},
    "unknown key at the top": {"replicaCount": 2},
    "unknown key in sidecar": {"sidecar": {"wrokers": 2}},
    "unknown key in a tool (toolgate would reject it too)": {
        "config": {"tools": [{"name": "jira", "hosts": ["jira.example.com"], "protocl": "mcp"}]}
    },
    "unknown capture mode": {"capture": {"mode": "ebpf"}},
    "CIDR that is not IPv4": {"capture": {"transparent": {"excludeCIDRs": ["10.0.0.0/40"]}}},
    "port out of range": {"sidecar": {"ports": {"proxy": 70000, "admin": 15000, "transparent": 15006}}},
    "duration toolgate cannot parse": {"config": {"limits": {"upstream_timeout": "30 seconds please"}}},
    "shutdown timeout set twice": {"config": {"limits": {"shutdown_timeout": "5s"}}},
    "operator socket path not absolute": {"operator": {"socket": {"path": "operator.sock"}}},
    "operator token switch as a string": {"operator": {"token": {"enabled": "yes"}}},
    "revocation ttl toolgate cannot parse": {"operator": {"maxRevocationTTL": "a month"}},
    "state dir not absolute": {"state": {"dir": "var/lib/toolgate"}},
    "require_task_token as a string": {"config": {"chain": {"require_task_token": "yes"}}},
    "injector agent uid 1337": {"injector": {"agentUID": 1337}},
    "injector failure policy": {"injector": {"failurePolicy": "Sometimes"}},
}


RENDER_FAILURES = {
    "agent running as toolgate's uid under transparent capture": {
        "capture": {"mode": "transparent"},
        "agent": {"securityContext": {"runAsUser": 1337}},
    },
    "custom CA keys without an existing CA secret": {"ca": {"enabled": True, "certKey": "ca.pem"}},
    "operator socket in a directory mounted for something else": {
        "operator": {"socket": {"path": "/tmp/operator.sock"}}
    },
    "state in the operator socket's directory": {"state": {"dir": "/var/run/toolgate"}},
    "the injector and the demo agent in one release": {"injector": {"enabled": True}},
}


def cmd_reject(chart):
    report = {"rejected": {}, "accepted": []}
    with helm.Chart.load(chart) as loaded:
        loaded.validate_schema({})  # the defaults pass, so the rejections below mean something
        for why, values in BAD_VALUES.items():
            try:
                loaded.validate_schema(values)
            except helm.HelmValuesError as e:
                report["rejected"][why] = str(e)
                continue
            report["accepted"].append(why)
    # Values the schema cannot judge alone; the templates refuse them.
    report["render_failures"] = {}
    for why, values in RENDER_FAILURES.items():
        try:
            render(chart, values)
        except helm.HelmRenderError as e:
            report["render_failures"][why] = str(e)
            continue
        report["accepted"].append(why)
    # Rendering (what `helm install` does) refuses them too.
    try:
        render(chart, BAD_VALUES["unknown key in sidecar"])
        report["render_refused"] = False
    except helm.HelmValuesError:
        report["render_refused"] = True
    print(json.dumps(report, indent=2))
    return 0 if not report["accepted"] and report["render_refused"] else 1


def cmd_config(chart, values_file, out):
    values = {} if values_file == "-" else helm.values_from_yaml(pathlib.Path(values_file).read_text())
    manifests = render(chart, values)
    maps = [
        doc for _, doc in documents(manifests)
        if doc["kind"] == "ConfigMap" and "toolgate.yaml" in doc.get("data", {})
    ]
    if len(maps) != 1:
        print(json.dumps({"error": f"expected one toolgate ConfigMap, found {len(maps)}"}))
        return 1
    for key, text in maps[0]["data"].items():
        pathlib.Path(out, key).write_text(text)
    # The chart-generated CA and operator token (what toolgate reads from its mounts).
    secrets = {}
    for _, doc in documents(manifests):
        if doc["kind"] == "Secret":
            name = doc["metadata"]["name"]
            where = pathlib.Path(out, "secrets", name)
            where.mkdir(parents=True, exist_ok=True)
            for key, encoded in doc.get("data", {}).items():
                (where / key).write_bytes(base64.b64decode(encoded))
            secrets[name] = sorted(doc.get("data", {}))
    print(json.dumps({"files": sorted(maps[0]["data"]), "secrets": secrets}))
    return 0


PARENT_CHART = """apiVersion: v2
name: support-agent
version: 1.0.0
dependencies:
  - name: toolgate
    version: 0.1.0
"""
PARENT_VALUES = """toolgate:
  agent:
    enabled: false
  capture:
    mode: transparent
  ca:
    enabled: true
"""
# A workload of the parent's own, with toolgate composed in through the named templates and
# the subchart's scope (.Subcharts.toolgate).
PARENT_DEPLOYMENT = """apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: support-agent
spec:
  serviceName: support-agent
  selector:
    matchLabels: { app: support-agent }
  template:
    metadata:
      labels: { app: support-agent }
    spec:
      securityContext:
        {{- include "toolgate.podSecurityContext" .Subcharts.toolgate | nindent 8 }}
      initContainers:
        {{- include "toolgate.initContainers" .Subcharts.toolgate | trim | nindent 8 }}
      containers:
        - name: triage
          image: example.org/triage-agent:1.4
          env:
            - { name: MODEL, value: small }
            {{- include "toolgate.agentEnv" .Subcharts.toolgate | trim | nindent 12 }}
          volumeMounts:
            {{- include "toolgate.agentVolumeMounts" .Subcharts.toolgate | trim | nindent 12 }}
        {{- with include "toolgate.containers" .Subcharts.toolgate | trim }}
        {{- . | nindent 8 }}
        {{- end }}
      volumes:
        {{- include "toolgate.volumes" .Subcharts.toolgate | trim | nindent 8 }}
"""


def cmd_parent(chart, out):
    with tempfile.TemporaryDirectory() as tmp:
        parent = pathlib.Path(tmp, "support-agent")
        (parent / "templates").mkdir(parents=True)
        (parent / "Chart.yaml").write_text(PARENT_CHART)
        (parent / "values.yaml").write_text(PARENT_VALUES)
        (parent / "templates" / "statefulset.yaml").write_text(PARENT_DEPLOYMENT)
        shutil.copytree(chart, parent / "charts" / "toolgate")
        manifests = render(str(parent), {})
    docs = [doc for _, doc in documents(manifests)]
    errors = [e for doc in docs for e in validate_object(doc)]
    pathlib.Path(out, "parent.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    print(json.dumps({"objects": [f"{d['kind']}/{d['metadata']['name']}" for d in docs], "errors": errors}))
    return 0 if docs and not errors else 1


def cmd_objects(chart, values_file, out):
    values = helm.values_from_yaml(pathlib.Path(values_file).read_text())
    docs = [doc for _, doc in documents(render(chart, values))]
    errors = [e for doc in docs for e in validate_object(doc)]
    pathlib.Path(out, "objects.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    print(json.dumps({"objects": [f"{d['kind']}/{d['metadata']['name']}" for d in docs], "errors": errors}))
    return 0 if docs and not errors else 1


def main(argv):
    commands = {
        "render": (cmd_render, 2),
        "reject": (cmd_reject, 1),
        "config": (cmd_config, 3),
        "parent": (cmd_parent, 2),
        "objects": (cmd_objects, 3),
    }
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    fn, _ = commands[argv[1]]
    return fn(*argv[2:])


if __name__ == "__main__":
    os.chdir(pathlib.Path(__file__).parent)  # a stable cwd; paths given are absolute
    sys.exit(main(sys.argv))
