#!/usr/bin/env bash
# Prints the path of a Jaeger v1.75.0 binary (the trace backend of the traces test), building
# it from the Go module proxy the first time: tools/jaeger pins it with go.mod/go.sum (made by
# `go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v1.75.0`). The binary is kept
# outside the clone, like cargo's target directory, so a fresh clone does not build it again.
# A first build takes about 7 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
version=v1.75.0
out="${AGENTLOG_TOOLS_DIR:-$HOME/.cache/agentlog/tools}/jaeger-$version"
if [ ! -x "$out" ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "go is not installed: the traces test needs it to build Jaeger (apt-get install golang, or https://go.dev/dl)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$out")"
  echo "building jaeger $version (first time only)" >&2
  (cd tools/jaeger && go build -o "$out.tmp" github.com/jaegertracing/jaeger/cmd/jaeger) >&2
  mv "$out.tmp" "$out"
fi
echo "$out"
