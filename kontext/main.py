"""`kontext-sidecar`: serve the edit contract over HTTP (no chain), as run_local.sh does."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kontext-sidecar",
        description="Serve POST /edit, /sync/edit, status, result, images, capacity and health. Configuration "
        "comes from the environment and .env (see .env.example); flags override it.",
    )
    parser.add_argument("--env-file", default=".env", help="dotenv file to read (default: .env)")
    parser.add_argument("--host", help="bind address (MINER_SERVER_HOST)")
    parser.add_argument("--port", type=int, help="port (MINER_SERVER_PORT, default 8091)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    from kontext.process import run_server

    args = build_parser().parse_args(argv)
    run_server(args.log_level, lambda: _serve(args))


async def _serve(args: argparse.Namespace) -> None:
    from kontext.http.app import create_app
    from kontext.http.serve import Listener, serve
    from kontext.runtime import Runtime
    from kontext.settings import Settings

    settings = Settings.load(args.env_file, miner_server_host=args.host, miner_server_port=args.port)
    runtime = Runtime(settings)
    sidecar = Listener("sidecar", create_app(runtime), settings.miner_server_host, settings.miner_server_port)
    await serve(runtime, [sidecar])

if __name__ == "__main__":
    main()
