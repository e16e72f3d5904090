# agentlog: `make dev` runs the platform on the embedded log; `make test` runs every test
# against both backends (it installs build dependencies and starts/stops a local Kafka).
SHELL := /bin/bash
# The target directory lives outside the clone so a fresh clone (CI) reuses earlier builds.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/agentlog/target

.PHONY: dev test faults bench bench-log deps build kafka-start kafka-stop clean-dev

deps:
	@scripts/install-deps.sh

build: deps
	cargo build --release

dev: deps
	cargo run --release -- --config config/dev.toml dev

test: deps
	scripts/test.sh

# Every fault scenario (FAULTS.md), one at a time, on a three-broker Kafka the suite starts
# on ports 29092-29097 and stops at its end; verdicts are appended to
# $AGENTLOG_FAULTS_RESULTS (default $TMPDIR or /tmp, then agentlog-faults/results.jsonl).
faults: deps
	cargo test --release --test faults -- --include-ignored --test-threads=1 --nocapture

# Log benchmark on both backends (starts and stops the local Kafka).
bench: deps
	scripts/bench.sh

kafka-start:
	scripts/kafka-local.sh start

kafka-stop:
	scripts/kafka-local.sh stop

clean-dev:
	rm -rf data/dev
