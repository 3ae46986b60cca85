#!/usr/bin/env bash
# Start a kontext-worker (engines on this host's devices, jobs from Redis) with the project's venv; pm2 runs this
# through ecosystem.scale.config.js. Settings come from .env (JOB_BACKEND=redis, REDIS_URL, KONTEXT_DEVICES);
# arguments go to kontext/worker_main.py and win over it (--help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/_bootstrap.sh
export PYTHONHASHSEED=0  # (CUBLAS_WORKSPACE_CONFIG: the environment's, else .env's, else :4096:8)
exec python -m kontext.worker_main "$@"
