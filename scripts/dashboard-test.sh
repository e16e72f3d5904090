#!/usr/bin/env bash
# The dashboard in a real browser (tests/dashboard): Debian's chromium, headless, driven by
# playwright-core against a real `agentlog dev`. Installs chromium with apt when it is missing
# (never a browser downloaded by a tool) and the locked packages (npm ci) when node_modules is
# missing or older than package-lock.json. AGENTLOG_BIN names the agentlog binary; without it
# (or without chromium) the test skips, except under CI=true, where it fails.
#
#   scripts/dashboard-test.sh                        # screenshots to a temporary directory
#   scripts/dashboard-test.sh --update-screenshots   # ... to docs/dashboard (the README's)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ "${1:-}" = "--update-screenshots" ]; then
  export DASHBOARD_SCREENSHOTS="$root/docs/dashboard"
  shift
fi
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "installing chromium (Debian's package)" >&2
  # Without it the test skips (fails under CI=true) and says why.
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }; then
    echo "could not install chromium" >&2
  fi
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing nodejs and npm" >&2
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
cd tests/dashboard
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  # playwright-core downloads no browser; the variable says so to any tool that might.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2
  touch node_modules
fi
export AGENTLOG_BIN="${AGENTLOG_BIN:-}"
exec node --test "$@" dashboard.test.js
