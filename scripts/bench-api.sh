#!/usr/bin/env bash
# The HTTP API benchmark: `agentlog api` on the embedded log (with an echo worker it is
# `agentlog dev`: the default a user runs), and `agentlog bench api` as a separate process
# offering GET /v1/tasks/{id} at 5,000 req/s and POST /v1/tasks at 2,000 req/s.
# Usage: scripts/bench-api.sh WORKDIR
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: scripts/bench-api.sh WORKDIR}
bin="${CARGO_TARGET_DIR:-$HOME/.cache/agentlog/target}/release/agentlog"
mkdir -p "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api_port=$(free_port)
registry_port=$(free_port)
cat > "$work/api.toml" <<TOML
[log]
backend = "embedded"
[log.embedded]
data_dir = "$work/log"
[registry]
listen = "127.0.0.1:$registry_port"
url = "http://127.0.0.1:$registry_port"
[api]
listen = "127.0.0.1:$api_port"
[projection]
dir = "$work/projection"
[agents.echo]
runtime = { kind = "builtin", name = "echo" }
concurrency = 32
TOML
RUST_LOG=warn "$bin" --config "$work/api.toml" dev >"$work/dev.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$api_port/readyz" >/dev/null && break
  sleep 0.2
done
url="http://127.0.0.1:$api_port"
"$bin" bench api --url "$url" --op get --rate 5000 --seconds 10 --tasks 10000
"$bin" bench api --url "$url" --op submit --rate 2000 --seconds 10
