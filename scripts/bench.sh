#!/usr/bin/env bash
# `make bench`: `agentlog bench log`, `tasks`, `projection` and `api` on the embedded log
# (default durability and fsync=always) and on a local Kafka. Prints the figures
# BENCHMARKS.md records.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${BENCH_RECORDS:-1000000}
cargo build --release
bin="$CARGO_TARGET_DIR/release/agentlog"
work=$(mktemp -d)
trap 'scripts/kafka-local.sh stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

echo "== embedded, fsync=never (default)"
AGENTLOG__LOG__EMBEDDED__DATA_DIR="$work/never" "$bin" bench log --records "$records"
echo "== embedded tasks end to end"
AGENTLOG__LOG__EMBEDDED__DATA_DIR="$work/tasks" "$bin" bench tasks --tasks 200000 --rate 10000 --seconds 10 --concurrency 256
echo "== embedded projection rebuild and snapshot restore"
AGENTLOG__LOG__EMBEDDED__DATA_DIR="$work/projection" "$bin" bench projection --events 1000000 --tail 50000
echo "== HTTP API on the embedded log (agentlog api; load from a separate process)"
scripts/bench-api.sh "$work/api"
echo "== embedded, fsync=always"
AGENTLOG__LOG__EMBEDDED__DATA_DIR="$work/always" AGENTLOG__LOG__EMBEDDED__FSYNC=always "$bin" bench log --records "$records"
scripts/kafka-local.sh start
echo "== kafka (acks=all, idempotent)"
AGENTLOG__LOG__BACKEND=kafka AGENTLOG__LOG__KAFKA__BOOTSTRAP_SERVERS="$(scripts/kafka-local.sh bootstrap)" \
  "$bin" bench log --records "$records"
echo "== kafka tasks end to end"
AGENTLOG__LOG__BACKEND=kafka AGENTLOG__LOG__KAFKA__BOOTSTRAP_SERVERS="$(scripts/kafka-local.sh bootstrap)" \
  "$bin" bench tasks --tasks 100000 --rate 5000 --seconds 10 --concurrency 256 --failover
echo "== kafka projection rebuild and snapshot restore"
AGENTLOG__LOG__BACKEND=kafka AGENTLOG__LOG__KAFKA__BOOTSTRAP_SERVERS="$(scripts/kafka-local.sh bootstrap)" \
  "$bin" bench projection --events 1000000 --tail 50000
