#!/usr/bin/env bash
# Run every check CI runs, on a fresh machine: formatting, clippy, and the whole test suite
# (unit, golden, end-to-end against the real binary on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# The Helm chart's offline checks (tests/helm.rs): Helm's Go SDK and Kubernetes' schemas.
python3 -c 'import helm_python, kubernetes_validate' 2>/dev/null ||
  python3 -m pip install -q 'helm-python-sdk>=0.2,<0.3' 'kubernetes-validate>=1.37,<2'
# The admission webhook's patches, applied by an independent RFC 6902 implementation
# (tests/inject.rs).
python3 -c 'import jsonpatch' 2>/dev/null || python3 -m pip install -q 'jsonpatch>=1.33,<2'
# HTTPS through the proxy with a real Python client (tests/https.rs).
python3 -c 'import requests' 2>/dev/null || python3 -m pip install -q 'requests>=2.31,<3'
# The official MCP Python SDK, both sides of toolgate in tests/mcp.rs (server class
# mcp.server.mcpserver.MCPServer and mcp.Client exist from 2.x on).
python3 -c 'from mcp import Client; import mcp.server.mcpserver' 2>/dev/null ||
  python3 -m pip install -q 'mcp>=2.3,<3'
# The official MCP TypeScript SDK as a client (tests/mcp_sdk.rs), pinned by
# tests/mcp/ts/package-lock.json; run with the machine's Node.js. `npm ci` only when the
# installed tree is not the locked one, so a second run does nothing.
command -v node >/dev/null || apt_install nodejs npm
if ! cmp -s tests/mcp/ts/package-lock.json tests/mcp/ts/node_modules/.installed-lock.json 2>/dev/null; then
  (cd tests/mcp/ts && npm ci --no-audit --no-fund --ignore-scripts &&
    cp package-lock.json node_modules/.installed-lock.json)
fi
# A real trace store (tests/phoenix.rs): Arize Phoenix, which receives OTLP and answers span
# queries over REST. About 1.5 minutes to install here (measured 2026-12-02), nothing after.
python3 -c 'import phoenix.server.main' 2>/dev/null ||
  python3 -m pip install -q 'arize-phoenix>=20.26,<21'
# Minted credentials are verified by an independent JWT implementation (tests/credentials).
python3 -c 'import jwt, cryptography' 2>/dev/null ||
  python3 -m pip install -q 'pyjwt[crypto]>=2.8,<3'

# The approval page in a real browser (tests/approvals/page.rs): Debian's Chromium, driven
# headless by Playwright for Python against /usr/bin/chromium (never `playwright install`,
# which downloads a browser build). A few minutes the first time, nothing after.
command -v chromium >/dev/null || apt_install chromium
python3 -c 'import playwright.sync_api' 2>/dev/null ||
  python3 -m pip install -q 'playwright>=1.49,<2'

# The shared state backend's tests (tests/state_redis.rs) run Debian's redis-server, one per
# test on a free loopback port.
command -v redis-server >/dev/null || apt_install redis-server

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace --all-targets
# The Criterion benches build with the bench profile (release), as `cargo bench` runs them;
# `cargo test --all-targets` above already ran each once in test mode.
cargo bench --locked --workspace --no-run
