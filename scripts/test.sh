#!/usr/bin/env bash
# `make test`: starts a local Kafka, runs every test against both backends, stops Kafka, and
# prints how many scenarios of the every-backend suites (conformance, task lifecycle, tenancy, agent protocol) passed per backend.
set -euo pipefail
cd "$(dirname "$0")/.."

# Style gate first (it takes a second): the code is what `cargo fmt` makes of it (rustfmt.toml).
fmt_status=0
if ! cargo fmt --version >/dev/null 2>&1; then
  echo "rustfmt is not installed (rustup component add rustfmt): the style gate cannot run" >&2
  fmt_status=1
elif ! unformatted=$(cargo fmt --all --check -- --files-with-diff); then
  echo "$unformatted" >&2
  echo "the files above are not formatted: run cargo fmt --all" >&2
  fmt_status=1
fi

# Lints: clippy over every target, warnings as errors. It shares the release build's
# dependencies (same profile), so only agentlog itself is checked (about a minute).
clippy_status=0
if ! cargo clippy --release --workspace --all-targets --quiet -- -D warnings; then
  echo "clippy found the problems above: fix them (or allow one with a comment saying why)" >&2
  clippy_status=1
fi

log_dir=$(mktemp -d)
trap 'scripts/kafka-local.sh stop >/dev/null 2>&1 || true; rm -rf "$log_dir"' EXIT

scripts/kafka-local.sh start
AGENTLOG_TEST_KAFKA=$(scripts/kafka-local.sh bootstrap)
export AGENTLOG_TEST_KAFKA
echo "tests use Kafka at $AGENTLOG_TEST_KAFKA"

venv=$(scripts/python-env.sh)

# The traces test reads its spans back from a real Jaeger, built once from the Go module proxy.
AGENTLOG_TEST_JAEGER=$(scripts/jaeger.sh)
export AGENTLOG_TEST_JAEGER

# Tests that need Kafka are #[ignore]d (a plain `cargo test` lists them as ignored), so every
# run here includes them. The fault suite's CI subset (tests/faults.rs, top level) starts its
# own three-broker cluster on 127.0.0.1:29092-29097 and stops it; `make faults` runs the rest.
# (The criterion benchmarks run once each as tests, apart: their harness takes no --skip.)
set +e
cargo test --release --workspace --lib --bins --tests --examples -- --include-ignored --skip make_faults:: 2>&1 | tee "$log_dir/test.log"
status=${PIPESTATUS[0]}
cargo test --release --bench '*' 2>&1 | tee -a "$log_dir/test.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
set -e
# Nothing may have been left out: an ignored test here would be one nobody runs.
if grep -E '^test result: .* [1-9][0-9]* ignored' "$log_dir/test.log" >&2; then
  echo "tests were ignored in make test (above): every test runs here" >&2
  status=1
fi
[ "$fmt_status" -eq 0 ] || status=1
[ "$clippy_status" -eq 0 ] || status=1

# Schema evolution: a change that would break a reader of the released schemas fails here.
bin="${CARGO_TARGET_DIR:-target}/release/agentlog"
cargo build --release --quiet
"$bin" schemas check || status=1

# Interop with Confluent's own Python client against the same Kafka.
AGENTLOG_BIN="$bin" "$venv/bin/python" -m pytest -q -p no:warnings tests/interop || status=1

# The Python SDK (sdk/python): its unit tests, and end to end against this binary (an agent
# it serves streaming through agentlog, a client reading the stream and resuming it).
AGENTLOG_BIN="$bin" scripts/sdk-python-test.sh || status=1
# The TypeScript SDK (sdk/typescript), the same on Node.
AGENTLOG_BIN="$bin" scripts/sdk-typescript-test.sh || status=1
# Both SDKs together (sdk/interop): a Python agent delegates to a TypeScript agent that
# delegates to a Python agent, and the result comes back up through agentlog.
AGENTLOG_BIN="$bin" scripts/sdk-interop-test.sh || status=1
# The dashboard (GET /) in Debian's chromium, headless, against a real agentlog dev: the key,
# a task submitted and followed to its page, a dead letter resubmitted, every page.
AGENTLOG_BIN="$bin" scripts/dashboard-test.sh || status=1

# The HTTP API fuzzed from its own OpenAPI document: any 5xx fails.
AGENTLOG_BIN="$bin" scripts/schemathesis.sh || status=1

memory=$(grep -cE '^test (conformance|tasks|tenancy|protocol)::memory::[a-z0-9_]+ \.\.\. ok$' "$log_dir/test.log" || true)
embedded=$(grep -cE '^test (conformance|tasks|tenancy|protocol)::embedded::[a-z0-9_]+ \.\.\. ok$' "$log_dir/test.log" || true)
kafka=$(grep -cE '^test (conformance|tasks|tenancy|protocol)::kafka::[a-z0-9_]+ \.\.\. ok$' "$log_dir/test.log" || true)
echo
echo "every-backend suites (conformance, task lifecycle, tenancy, agent protocol): memory ${memory} passed, embedded ${embedded} passed, kafka ${kafka} passed"
if [ "$status" -ne 0 ]; then
  echo "tests failed" >&2
  exit "$status"
fi
# The memory log runs every scenario but the durable ones (a log that outlives a process).
if [ "$embedded" -eq 0 ] || [ "$kafka" -ne "$embedded" ] || [ "$memory" -eq 0 ]; then
  echo "the every-backend suites must run every scenario on every backend" >&2
  exit 1
fi
