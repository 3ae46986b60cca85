#!/usr/bin/env bash
# Run the whole test suite (unit + end-to-end on the tiny real model) and, with no arguments, beside it its
# second leg on the oldest supported stack (scripts/test_older_stack.sh). Extra args go to pytest alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/_bootstrap.sh

# The scale-out tests start their own redis-server (a real one, never a fake): install it where missing.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[test] installing redis-server (Debian package)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Some hosts set PYTHONDONTWRITEBYTECODE: then every Python process the suite starts (a pytest worker each, a dozen
# miner processes) compiles the project's modules, and pytest rewrites every test module, again. Write the bytecode
# (``__pycache__/`` is ignored by git).
unset PYTHONDONTWRITEBYTECODE
export PYTHONHASHSEED=0 CUBLAS_WORKSPACE_CONFIG=:4096:8
if [ "$#" -ne 0 ]; then
  exec python -m pytest -q "$@"
fi
# The second leg (the oldest supported stack, its own interpreter and overlay) runs beside the main one at the
# lowest CPU priority: where cores are free it runs on them; on two busy cores it takes mostly what the main leg's
# workers leave while they wait on servers, and often finishes after it (at nice 10 it slowed the main leg by up to
# a tenth, for no gain in the whole run's time). Its output is printed when it ends.
older_log="$(mktemp)"
nice -n 19 bash scripts/test_older_stack.sh > "$older_log" 2>&1 &
older=$!
trap 'kill "$older" 2>/dev/null || true; rm -f "$older_log"' EXIT
echo "[test] mypy (kontext, protocol, neurons, tools)"
python -m mypy
# Three pytest workers, a test file each at a time (pytest-xdist), the longest first (tests/conftest.py): on two
# cores, because the end-to-end tests spend much of their time waiting on servers, callbacks and leases, a third
# keeps the cores busy meanwhile.
# schemathesis generates its tests lazily, which xdist does not collect: that file runs on its own after.
python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --ignore tests/unit/test_fuzz_http.py
python -m pytest -q tests/unit/test_fuzz_http.py
echo "[test] second leg: the oldest supported stack"
status=0
wait "$older" || status=$?
cat "$older_log"
exit "$status"
