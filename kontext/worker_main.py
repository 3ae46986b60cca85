"""`kontext-worker`: engines on this host's devices taking jobs from Redis (JOB_BACKEND=redis), for doors elsewhere."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from kontext.flags import Flag, add_flags, env_file_flag, given
from kontext.settings import Profile, Settings


class WorkerSettings(Settings):
    """A worker sends the callbacks of the jobs it runs: by default under the subnet validator's timing rules."""

    kontext_profile: Profile = "subnet"


FLAGS = (
    Flag("--redis-url", "redis_url", "the shared job store"),
    Flag("--devices", "kontext_devices", "devices to run one engine each on: auto, cuda, cpu or e.g. cuda:0,cuda:1"),
    Flag("--name", "worker_name", "this process's name in the queue and /health (default host:pid)"),
    Flag("--health-port", "worker_health_port", "GET /health and /metrics here (0: off)", int),
    Flag("--profile", "kontext_profile", "rules in force for the callbacks it sends: subnet or local"),
    Flag("--log-level", "log_level", "logging level"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kontext-worker",
        description="Run one engine and worker per device (KONTEXT_DEVICES) on jobs from Redis (REDIS_URL); "
        "send their callbacks. Every flag is also a setting of the environment or .env (see .env.example).",
    )
    env_file_flag(parser)
    add_flags(parser, FLAGS, WorkerSettings)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    from kontext.process import run_server

    args = build_parser().parse_args(argv)
    run_server(args.env_file, lambda: _serve(args))


async def _serve(args: argparse.Namespace) -> None:
    from kontext.http.serve import Listener, serve
    from kontext.http.worker_app import create_worker_app
    from kontext.process import set_level
    from kontext.runtime import Runtime

    settings = WorkerSettings.load(args.env_file, job_backend="redis", **given(args, FLAGS))
    set_level(settings.log_level)
    runtime = Runtime(settings, role="worker")
    listeners = []
    if settings.worker_health_port:
        listeners.append(Listener("worker health", create_worker_app(runtime), settings.worker_health_host,
                                  settings.worker_health_port))
    await serve(runtime, listeners)

if __name__ == "__main__":
    main()
