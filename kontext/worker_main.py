"""`kontext-worker`: engines on this host's devices taking jobs from Redis (JOB_BACKEND=redis), for doors elsewhere."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kontext-worker",
        description="Run one engine and worker per device (KONTEXT_DEVICES) on jobs from Redis (REDIS_URL); "
        "send their callbacks. Settings come from the environment and .env (see .env.example).",
    )
    parser.add_argument("--env-file", default=".env", help="dotenv file to read (default: .env)")
    parser.add_argument("--redis-url", help="REDIS_URL")
    parser.add_argument("--devices", help="KONTEXT_DEVICES, e.g. cuda:0,cuda:1")
    parser.add_argument("--name", help="WORKER_NAME (default host:pid)")
    parser.add_argument("--health-port", type=int, help="WORKER_HEALTH_PORT (0: no /health)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    from kontext.process import run_server

    args = build_parser().parse_args(argv)
    run_server(args.log_level, lambda: _serve(args))


async def _serve(args: argparse.Namespace) -> None:
    from kontext.http.serve import Listener, serve
    from kontext.http.worker_app import create_worker_app
    from kontext.runtime import Runtime
    from kontext.settings import Settings

    settings = Settings.load(args.env_file, job_backend="redis", redis_url=args.redis_url,
                             kontext_devices=args.devices, worker_name=args.name,
                             worker_health_port=args.health_port)
    runtime = Runtime(settings, role="worker")
    listeners = []
    if settings.worker_health_port:
        listeners.append(Listener("worker health", create_worker_app(runtime), settings.worker_health_host,
                                  settings.worker_health_port))
    await serve(runtime, listeners)

if __name__ == "__main__":
    main()
