#!/usr/bin/env bash
# Runs the Python SDK's tests (sdk/python/tests) in a virtualenv of pinned packages, created
# or updated when sdk/python/requirements.lock changes (scripts/python-env.sh sdk).
# AGENTLOG_BIN names the agentlog binary the end-to-end tests run; without it they skip,
# except under CI=true, where they fail. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(scripts/python-env.sh sdk)
# The SDK itself, from this work tree: its dependencies are the lock's, its build backend
# (setuptools) too, so nothing is resolved or downloaded here.
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e sdk/python >&2
export AGENTLOG_BIN="${AGENTLOG_BIN:-}"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider sdk/python/tests "$@"
