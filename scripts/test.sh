#!/usr/bin/env bash
# Run the whole test suite (unit + end-to-end on the tiny real model). Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/_bootstrap.sh

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONHASHSEED=0 CUBLAS_WORKSPACE_CONFIG=:4096:8
if [ "$#" -eq 0 ]; then
  echo "[test] mypy (kontext, protocol, neurons)"
  python -m mypy
fi
exec python -m pytest -q "$@"
