"""`kontext-sidecar`: serve the edit contract over HTTP (no chain), as run_local.sh does."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from kontext.flags import Flag, add_flags, env_file_flag, given
from kontext.settings import Settings

FLAGS = (
    Flag("--host", "miner_server_host", "bind address (loopback by default: the job routes are unsigned here)"),
    Flag("--port", "miner_server_port", "port", int),
    Flag("--profile", "kontext_profile", "rules in force: local (the seed's plain behaviour) or subnet (the "
         "validator's timing rules)"),
    Flag("--log-level", "log_level", "logging level"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kontext-sidecar",
        description="Serve POST /edit, /sync/edit, status, result, images, capacity and health. Every flag is also "
        "a setting of the environment or .env (see .env.example); a flag given wins.",
    )
    env_file_flag(parser)
    add_flags(parser, FLAGS, Settings)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    from kontext.process import run_server

    args = build_parser().parse_args(argv)
    run_server(args.env_file, lambda: _serve(args))


async def _serve(args: argparse.Namespace) -> None:
    import logging

    from kontext.http.app import create_app
    from kontext.http.serve import Listener, is_loopback, serve
    from kontext.process import set_level
    from kontext.runtime import Runtime

    settings = Settings.load(args.env_file, **given(args, FLAGS))
    set_level(settings.log_level)
    if not is_loopback(settings.miner_server_host):
        logging.getLogger("kontext.sidecar").warning(
            "the sidecar's job routes are unsigned and it listens on %s: anyone who reaches that address can "
            "submit jobs (the neuron signs its doors; bind 127.0.0.1 for local use)", settings.miner_server_host)
    runtime = Runtime(settings)
    sidecar = Listener("sidecar", create_app(runtime), settings.miner_server_host, settings.miner_server_port)
    await serve(runtime, [sidecar])

if __name__ == "__main__":
    main()
