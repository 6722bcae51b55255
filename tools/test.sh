#!/usr/bin/env bash
# Set up a development environment on a fresh machine and run the whole test suite.
# CI runs exactly this (through .ci/run). Extra arguments go to pytest, e.g. `bash tools/test.sh -k data`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
phase() { echo "== $1 (${SECONDS}s)"; }
quiet() {  # run a command, show its output only if it fails
  local log; log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -50; rm -f "$log"; return 1; fi
  rm -f "$log"
}

phase "python environment"
[ -x .venv/bin/python ] || python3 -m venv .venv
quiet .venv/bin/python -m pip install --upgrade pip
phase "install recbook with its development tools"
quiet .venv/bin/python -m pip install -e ".[dev]"

if ! command -v chromium >/dev/null 2>&1; then
  phase "install Debian's chromium for the browser test"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  quiet $sudo apt-get update
  quiet env DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium
fi

phase "tests"
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
echo "== done in $((SECONDS - started))s (pytest exit $status)"
exit $status
