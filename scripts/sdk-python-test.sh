#!/usr/bin/env bash
# Runs the Python SDK's tests (sdk/python/tests) in a virtualenv of pinned packages, created
# or updated when sdk/python/requirements.lock changes (the pattern of scripts/python-env.sh).
# AGENTLOG_BIN names the agentlog binary the end-to-end tests run; without it they skip,
# except under CI=true, where they fail. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${AGENTLOG_CACHE:-$HOME/.cache/agentlog}"
venv="$cache/venv-sdk-python"
lock=sdk/python/requirements.lock
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
# The SDK itself, from this work tree: its dependencies are the lock's, its build backend
# (setuptools) too, so nothing is resolved or downloaded here.
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e sdk/python >&2
export AGENTLOG_BIN="${AGENTLOG_BIN:-}"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider sdk/python/tests "$@"
