#!/usr/bin/env bash
# Run the miner's sidecar locally on the embedded default: a tiny real Kontext model built
# offline, CPU only, no chain. Serves http://127.0.0.1:8091 (override with MINER_SERVER_PORT).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/_bootstrap.sh

MODEL_DIR="${KONTEXT_TINY_MODEL_DIR:-$ROOT/models/tiny-kontext}"
python scripts/make_tiny_kontext.py "$MODEL_DIR"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONHASHSEED=0 CUBLAS_WORKSPACE_CONFIG=:4096:8
export ENABLE_KONTEXT_EDIT=true
export KONTEXT_MODEL_PATH="$MODEL_DIR"
export KONTEXT_DEVICES=cpu
export KONTEXT_LOCAL_FILES_ONLY=true
export MINER_SERVER_HOST="${MINER_SERVER_HOST:-127.0.0.1}"
export MINER_SERVER_PORT="${MINER_SERVER_PORT:-8091}"
export DATA_DIR="${DATA_DIR:-$ROOT/var/local}"
export OUTBOUND_ALLOW_PRIVATE=true
echo "[run_local] serving on http://$MINER_SERVER_HOST:$MINER_SERVER_PORT (model: $MODEL_DIR, data: $DATA_DIR)"
exec kontext-sidecar --env-file /dev/null "$@"
