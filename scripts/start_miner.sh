#!/usr/bin/env bash
# Start the miner neuron (public door + loopback sidecar) with the project's venv; pm2 runs this through
# ecosystem.config.js. Settings come from .env; arguments go to neurons/miner.py and win over it (--help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/_bootstrap.sh
export PYTHONHASHSEED=0  # (CUBLAS_WORKSPACE_CONFIG: the environment's, else .env's, else :4096:8)
exec python neurons/miner.py "$@"
