#!/usr/bin/env bash
# Runs the TypeScript SDK's tests (sdk/typescript/test) with Node's own test runner, on the
# JavaScript tsc compiles. Installs the locked packages (npm ci) only when node_modules is
# missing or older than package-lock.json. AGENTLOG_BIN names the agentlog binary the
# end-to-end tests run; without it they skip, except under CI=true, where they fail.
# Extra arguments go to `node --test` (e.g. --test-name-pattern=stream).
set -euo pipefail
cd "$(dirname "$0")/../sdk/typescript"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing nodejs and npm" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund --loglevel=error >&2
  touch node_modules
fi
npx --no-install tsc -p .
export AGENTLOG_BIN="${AGENTLOG_BIN:-}"
# Node 20 takes a directory as "every .js file under it", helpers included: name the tests.
exec node --test "$@" test/*.test.js
