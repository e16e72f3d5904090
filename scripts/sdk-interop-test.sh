#!/usr/bin/env bash
# Runs the cross-language SDK tests (sdk/interop): a Python agent delegating to a TypeScript
# agent that delegates to a Python agent, end to end through agentlog, on the embedded log and
# (when AGENTLOG_TEST_KAFKA names a broker) on Kafka. Prepares both SDKs as their own scripts
# do: the Python SDK's virtualenv of pinned packages (scripts/python-env.sh sdk) with the SDK
# installed from the work tree, and the TypeScript SDK compiled (npm ci only when node_modules
# is missing or older than package-lock.json).
# AGENTLOG_BIN names the agentlog binary; without it the tests skip, except under CI=true,
# where they fail (so does the Kafka variant without AGENTLOG_TEST_KAFKA). Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(scripts/python-env.sh sdk)
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e sdk/python >&2
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing nodejs and npm" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
(
  cd sdk/typescript
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error >&2
    touch node_modules
  fi
  npm run --silent build >&2
)
export AGENTLOG_BIN="${AGENTLOG_BIN:-}"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider sdk/interop "$@"
