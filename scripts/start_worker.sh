#!/usr/bin/env bash
# Start a kontext-worker (engines on this host's devices, jobs from Redis) with the project's venv; for pm2:
#   JOB_BACKEND=redis REDIS_URL=redis://10.0.0.5:6379/0 pm2 start scripts/start_worker.sh --name kontext-worker
# Arguments go to kontext/worker_main.py, e.g. --devices cuda:0,cuda:1 --name gpu-host-a
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/_bootstrap.sh
export PYTHONHASHSEED=0 CUBLAS_WORKSPACE_CONFIG=:4096:8
exec python -m kontext.worker_main "$@"
