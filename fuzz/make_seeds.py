#!/usr/bin/env python3
"""Write the seed corpus for the fuzz targets from the golden cases (tests/golden/*.yaml):
each case's request as a raw HTTP/1.1 request (request_head), its body behind the selector
bytes of body_classify, and MCP bodies as they are (mcp_jsonrpc). Hand-written seeds live
beside them under names that do not start with `golden-`. Run from the repository root:

    python3 fuzz/make_seeds.py
"""
import glob
import os
import urllib.parse

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")

# body_classify's selector bytes (see fuzz_targets/body_classify.rs).
TYPES = {
    "application/json": "0",
    "application/x-www-form-urlencoded": "1",
    "application/vnd.api+json": "2",
    "application/json; charset=utf-8": "3",
}
ROUTES = {"/transitions": "0", "/v1/payments": "1", "/v1/refunds": "2", "/attachments": "3", "/records/": "4"}


def write(target, name, data):
    path = os.path.join(CORPUS, target, name)
    with open(path, "wb") as f:
        f.write(data)


def raw_request(req, absolute):
    method = req.get("method", "GET")
    url = req["url"]
    headers = dict(req.get("headers") or {})
    body = req.get("body")
    body = body.encode() if isinstance(body, str) else b""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme:
        origin = parts.path or "/"
        if parts.query:
            origin += "?" + parts.query
        target = url if absolute else origin
        headers.setdefault("host", parts.netloc)
    else:
        target = url
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers):
        headers["content-length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    return head.encode() + b"\r\n" + body


def main():
    for case in sorted(glob.glob(os.path.join(ROOT, "tests", "golden", "*.yaml"))):
        name = "golden-" + os.path.basename(case)[: -len(".yaml")]
        with open(case) as f:
            doc = yaml.safe_load(f)
        req = doc["request"]
        write("request_head", name, raw_request(req, absolute=True))
        if urllib.parse.urlsplit(req["url"]).scheme:
            write("request_head", name + "-origin-form", raw_request(req, absolute=False))
        body = req.get("body")
        if not isinstance(body, str) or not body:
            continue
        if "crm.example.com" in req["url"]:
            write("mcp_jsonrpc", name, body.encode())
            continue
        headers = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
        ctype = TYPES.get(headers.get("content-type", ""), "4")
        route = next((v for k, v in ROUTES.items() if k in req["url"]), "0")
        write("body_classify", name, (ctype + route).encode() + body.encode())


if __name__ == "__main__":
    main()
