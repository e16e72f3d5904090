#!/usr/bin/env bash
# Prints the path of a Python virtualenv holding pinned tools, creating or updating it when
# its lock file changed. `scripts/python-env.sh` is the interop test's Confluent client
# (tests/interop/requirements.lock); `scripts/python-env.sh schemathesis` is Schemathesis
# (tests/schemathesis/requirements.lock), in a venv of its own since their pins differ;
# `scripts/python-env.sh sdk` is what the Python SDK's tests need (sdk/python/requirements.lock).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${AGENTLOG_CACHE:-$HOME/.cache/agentlog}"
case "${1:-interop}" in
  interop) venv="$cache/venv"; lock=tests/interop/requirements.lock ;;
  schemathesis) venv="$cache/venv-schemathesis"; lock=tests/schemathesis/requirements.lock ;;
  sdk) venv="$cache/venv-sdk-python"; lock=sdk/python/requirements.lock ;;
  *) echo "usage: $0 [interop|schemathesis|sdk]" >&2; exit 2 ;;
esac
stamp="$venv/.lock-$(sha256sum "$lock" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    echo "installing python3-venv" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$lock" >&2
  rm -f "$venv"/.lock-* && touch "$stamp"
fi
echo "$venv"
