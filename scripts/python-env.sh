#!/usr/bin/env bash
# Prints the path of a Python virtualenv holding the interop test's pinned client
# (tests/interop/requirements.lock), creating or updating it when the lock file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AGENTLOG_CACHE:-$HOME/.cache/agentlog}/venv"
lock=tests/interop/requirements.lock
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
