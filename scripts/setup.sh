#!/usr/bin/env bash
# Install, idempotently, what a fresh machine lacks to build toolgate: cmake (pingora builds
# zlib-ng through libz-ng-sys). Sourced by run.sh and test.sh.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to install: $*" >&2; return 1; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

command -v cmake >/dev/null || apt_install cmake
# init-iptables and its network-namespace test: iptables, ip (iproute2), curl as the agent.
command -v iptables-restore >/dev/null || apt_install iptables
command -v ip >/dev/null || apt_install iproute2
command -v curl >/dev/null || apt_install curl
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required: https://rustup.rs" >&2; exit 1; }
