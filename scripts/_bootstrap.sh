#!/usr/bin/env bash
# Shared set-up for the scripts: create .venv if missing and install what the project needs.
# Re-runs are fast: installs are skipped while the requirement files are unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KONTEXT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# The versions to install: the subnet auditor's stack on a GPU host, the suite's proven stack elsewhere.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  CONSTRAINTS="${KONTEXT_CONSTRAINTS:-$ROOT/constraints/reference.txt}"
else
  CONSTRAINTS="${KONTEXT_CONSTRAINTS:-$ROOT/constraints/tested.txt}"
fi
stamp="$VENV/.kontext-installed"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/setup.py" "$CONSTRAINTS" \
  "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"  # (this file too: a change to how it installs re-installs)
# The installer: uv where it can be had (it resolves and installs the ~150 packages in seconds, where pip
# takes minutes on a small machine), else pip. Both keep an installed torch that meets the pins.
pip_install() {
  if python -m uv --version >/dev/null 2>&1; then
    # --compile-bytecode: pip writes each module's .pyc at install, uv does not by default; where
    # PYTHONDONTWRITEBYTECODE is set (CI images) nothing writes them later, and every process the suite
    # starts would parse diffusers and transformers from source again (~5 s each on a small machine).
    python -m uv pip install --quiet --compile-bytecode --python "$VENV/bin/python" "$@"
  else
    python -m pip install --quiet "$@"
  fi
}
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  started=$SECONDS
  python -m pip install --quiet --upgrade pip
  if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "[bootstrap] GPU found: installing the CUDA torch from requirements.txt"
    else
      # No GPU: take a CPU build first, with pip (only pip looks for the local CPU wheel), so requirements.txt's
      # torch range is already met (a bare `torch` would pull a multi-GB CUDA build).
      echo "[bootstrap] no GPU: installing CPU torch ${KONTEXT_CPU_TORCH:-2.13.0}"
      python -m pip install --quiet "torch==${KONTEXT_CPU_TORCH:-2.13.0}"
    fi
  fi
  python -m pip install --quiet uv || echo "[bootstrap] uv unavailable: installing with pip (slower)"
  echo "[bootstrap] installing requirements (constraints: ${CONSTRAINTS#$ROOT/})"
  pip_install -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" -c "$CONSTRAINTS"
  pip_install --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
  echo "[bootstrap] installed in $((SECONDS - started))s"
fi
