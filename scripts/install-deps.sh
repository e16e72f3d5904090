#!/usr/bin/env bash
# Installs what building agentlog needs when it is missing: a C/C++ toolchain, cmake and
# libclang (RocksDB's bindings), OpenSSL and zlib headers (librdkafka). Java and Maven for
# the local Kafka are installed by scripts/kafka-local.sh when it needs them.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in build-essential cmake pkg-config libclang-dev libssl-dev zlib1g-dev; do
  have_pkg "$pkg" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing build dependencies: ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust (https://rustup.rs), edition 2024 needs Rust >= 1.88" >&2
  exit 1
fi
# The style gates of `make test` (cargo fmt --check, cargo clippy -D warnings).
for tool in rustfmt clippy; do
  if ! cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
    echo "installing the Rust component $tool"
    rustup component add "$tool" || echo "could not install $tool: make test's style gate will fail until it is there" >&2
  fi
done
