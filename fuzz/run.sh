#!/usr/bin/env bash
# Run one fuzz target the way README "Fuzzing" records it: one job on one worker, its
# dictionary, the committed seeds read but never written (new inputs go to
# fuzz/work/<target>/corpus, ignored by git), a 10 s hang limit, and final statistics.
# libFuzzer writes a job's output to fuzz-0.log in the current directory: here
# fuzz/work/<target>/fuzz-0.log (follow it with tail -f); this script prints its summary at
# the end. From anywhere:
#
#   fuzz/run.sh request_head          # 600 s
#   fuzz/run.sh body_classify 20      # a short smoke run
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${1:?usage: fuzz/run.sh <target> [seconds]}
seconds=${2:-600}
case $target in
  request_head) dict=request_head; max_len=8192 ;;
  body_classify | mcp_jsonrpc) dict=json; max_len=8192 ;;
  config_load) dict=config_load; max_len=16384 ;;
  operator_bodies) dict=operator_bodies; max_len=4096 ;; # the endpoint reads at most 4 KiB
  *) echo "unknown target $target (see fuzz/Cargo.toml)" >&2; exit 2 ;;
esac
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
work="$root/fuzz/work/$target"
mkdir -p "$work/corpus"
cd "$work"
status=0
cargo +nightly fuzz run --fuzz-dir "$root/fuzz" "$target" "$work/corpus" "$root/fuzz/corpus/$target" -- \
  -dict="$root/fuzz/dict/$dict.dict" -max_len="$max_len" -timeout=10 \
  -max_total_time="$seconds" -jobs=1 -workers=1 -print_final_stats=1 >"$work/run.log" 2>&1 ||
  status=$?
grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::|ERROR|panicked|SUMMARY' "$work/fuzz-0.log" ||
  tail -20 "$work/run.log"
# A job that crashed still exits 0 in libFuzzer's -jobs mode: its log tells.
if grep -qE '^==[0-9]+== ERROR: libFuzzer|^SUMMARY: libFuzzer' "$work/fuzz-0.log"; then
  grep -m1 -A3 'panicked at' "$work/fuzz-0.log" || true
  echo "$target: crashed; the input is under fuzz/artifacts/$target/" >&2
  status=1
fi
exit "$status"
