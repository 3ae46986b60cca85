#!/usr/bin/env bash
# Start the miner neuron (public door + sidecar) with the project's venv; pm2 runs this via ecosystem.config.js.
# Arguments go to neurons/miner.py, e.g.:
#   scripts/start_miner.sh --netuid 11 --wallet.name miner --wallet.hotkey default --axon.external_ip 1.2.3.4
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/_bootstrap.sh
export PYTHONHASHSEED=0 CUBLAS_WORKSPACE_CONFIG=:4096:8
exec python neurons/miner.py "$@"
