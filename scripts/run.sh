#!/usr/bin/env bash
# Run toolgate on a fresh machine. Without arguments: the embedded quickstart
# (proxy 127.0.0.1:15001, admin 127.0.0.1:15000). Arguments go to `toolgate`, e.g.
#   scripts/run.sh run -c examples/quickstart/toolgate.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if [ $# -eq 0 ]; then set -- run; fi
exec cargo run --release --locked -- "$@"
