#!/usr/bin/env bash
# The suite's second leg: the engine's unit tests and one end-to-end determinism test on the oldest
# stack requirements.txt admits (constraints/older-stack.txt), overlaid on the main venv. Args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/_bootstrap.sh

PINS="$ROOT/constraints/older-stack.txt"
OVERLAY="$VENV/older-stack"
stamp="$OVERLAY/.kontext-installed"
want="$(sha256sum < "$PINS" | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[older-stack] installing $(grep -v '^#' "$PINS" | tr '\n' ' ')into $OVERLAY"
  rm -rf "$OVERLAY"
  # --no-deps: everything else comes from the main venv; the pins are exactly what must differ.
  pip_install --no-deps --target "$OVERLAY" -r "$PINS"
  echo "$want" > "$stamp"
fi

export PYTHONPATH="$OVERLAY${PYTHONPATH:+:$PYTHONPATH}" KONTEXT_EXPECT_STACK="$PINS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0 CUBLAS_WORKSPACE_CONFIG=:4096:8
unset KONTEXT_TINY_MODEL_DIR  # the tiny model is built afresh by this stack's transformers, never reused
python -c 'import sys, importlib
names = ("torch", "transformers", "tokenizers", "huggingface_hub", "diffusers", "PIL")
print("[older-stack] python", sys.version.split()[0], *(f"{n} {importlib.import_module(n).__version__}" for n in names))'
if [ "$#" -eq 0 ]; then
  set -- tests/unit/test_stack.py tests/unit/test_engine.py tests/unit/test_recipe.py \
    tests/unit/test_tiny_model.py tests/unit/test_diffusers_features.py \
    tests/e2e/kontext_determinism/test_determinism.py::test_same_request_after_a_restart_gives_the_same_png
fi
exec python -m pytest -q -p no:cacheprovider "$@"
