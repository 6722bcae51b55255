#!/usr/bin/env bash
# Set up a development environment on a fresh machine and run the whole test suite.
# CI runs exactly this (through .ci/run). Extra arguments go to pytest, e.g. `bash tools/test.sh -k data`.
#   - .venv: created with python3 -m venv if absent; recbook installed editable with its dev tools
#   - Debian's chromium, for the browser test of the site (installed with apt-get when missing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
phase_start=$SECONDS
phase() {  # announce a phase and start its clock
  echo "== $1"
  phase_start=$SECONDS
}
done_phase() { echo "   ($((SECONDS - phase_start)) s)"; }
quiet() {  # run a command; show its output (less pip's "Location ... is ignored" noise) only if it fails
  local log status=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -60; fi
  rm -f "$log"
  return "$status"
}

phase "python environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
# the CPU build of torch from PyTorch's index (PyPI has only the CUDA one); the constraint keeps it in place
quiet .venv/bin/python -m pip install --no-deps "$(grep '^torch==' constraints-cpu.txt)" \
  --index-url https://download.pytorch.org/whl/cpu
quiet .venv/bin/python -m pip install -e ".[dev]" -c constraints-cpu.txt
done_phase

if [ ! -x /usr/bin/chromium ]; then
  phase "Debian's chromium, for the browser test"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  quiet $sudo apt-get update
  quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
  done_phase
fi

phase "tests"
status=0
# two worker processes (pytest-xdist), a test file per worker at a time: module fixtures are built once, and one
# worker's waits (pip in the Colab simulation, the browser, notebook kernels) overlap the other's computing
.venv/bin/python -m pytest -q -n "${RECBOOK_TEST_WORKERS:-2}" --dist loadfile "$@" </dev/null || status=$?
done_phase
echo "== all done in $((SECONDS - started)) s, pytest exit status $status"
exit "$status"
