"""Apply the JSON patch toolgate inject answered with to the pod it was asked about, with an
implementation independent of toolgate's (PyPI jsonpatch, RFC 6902), and validate the result
strictly against Kubernetes 1.29 and 1.33 (PyPI kubernetes-validate). Driven by tests/inject.rs.

    apply.py < {"pod": {...}, "patch": [...]}   prints {"pod": {...}, "errors": [...]}
"""
import json
import sys

import jsonpatch
import kubernetes_validate

KUBE_VERSIONS = ["1.29.0", "1.33.0"]


def main():
    given = json.load(sys.stdin)
    pod = jsonpatch.apply_patch(given["pod"], given["patch"])
    errors = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"k8s {version}: {'.'.join(str(p) for p in e.path)}: {e.message}")
    print(json.dumps({"pod": pod, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
