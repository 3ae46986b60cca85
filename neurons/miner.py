"""The miner neuron operators start with pm2: wallet, chain, axon and sidecar in one process."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # `python neurons/miner.py` as well as `python -m neurons.miner`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neurons.config import OFFLINE, commit_endpoint, parse_args  # noqa: E402

log = logging.getLogger("kontext.miner")


def _load_hotkey(args: Any) -> tuple[Any, Any]:
    import bittensor as bt

    wallet = bt.Wallet(args.wallet_name, args.wallet_hotkey, path=os.path.expanduser(args.wallet_path))
    try:
        return wallet, wallet.hotkey
    except Exception as exc:  # noqa: BLE001 - a missing or locked key file is an operator error
        raise SystemExit(f"cannot load hotkey {args.wallet_name}/{args.wallet_hotkey} from {args.wallet_path}: "
                         f"{exc}") from None


def _public_ip(args: Any) -> Optional[str]:
    if args.axon_external_ip:
        return args.axon_external_ip
    try:
        address = ipaddress.ip_address(args.axon_ip)
    except ValueError:
        return None
    return None if address.is_unspecified or address.is_private else args.axon_ip


async def serve(args: Any, *, chain: Any = None) -> None:
    """Start everything, run until SIGTERM/SIGINT, then shut down gracefully."""
    from aiohttp import web

    from kontext.runtime import Runtime
    from kontext.settings import Settings
    from kontext.http.app import create_app
    from neurons.auth import SignatureVerifier
    from neurons.axon import create_axon_app
    from neurons.chain import BittensorChain, ChainError, check_and_serve, ensure_commitment
    from neurons.commitment import CommitmentError
    from neurons.registry import Gate, ValidatorRegistry, load_offline_members

    overrides = {k: v for k, v in {"miner_server_host": args.sidecar_host,
                                   "miner_server_port": args.sidecar_port}.items() if v}
    settings = Settings(_env_file=args.env_file, **overrides)  # type: ignore[call-arg]
    wallet, hotkey = _load_hotkey(args)
    gate = Gate(force_validator_permit=args.force_validator_permit, allow_non_registered=args.allow_non_registered)
    offline = args.network == OFFLINE and not args.chain_endpoint
    tasks: list[asyncio.Task[Any]] = []
    if offline:
        registry = ValidatorRegistry(gate, load_offline_members(args.validators or ""), source=OFFLINE)
    else:
        chain = chain or BittensorChain(args.chain_endpoint or args.network, wallet)
        port = args.axon_external_port or args.axon_port
        try:
            members = await check_and_serve(chain, netuid=args.netuid, hotkey=hotkey.ss58_address,
                                            ip=_public_ip(args), port=port, serve=not args.skip_serve_axon)
            if not args.skip_commit:
                commit_address, commit_port = commit_endpoint(args)
                log.info("%s", await ensure_commitment(chain, netuid=args.netuid, hotkey=hotkey.ss58_address,
                                                       address=commit_address, port=commit_port))
        except (ChainError, CommitmentError) as exc:
            raise SystemExit(str(exc)) from None
        registry = ValidatorRegistry(gate, members, source=args.chain_endpoint or args.network)

        async def fetch() -> dict:
            from neurons.registry import members_from_metagraph

            metagraph = await chain.metagraph(args.netuid)
            if metagraph is None:
                raise ChainError(f"subnet {args.netuid} not found")
            return members_from_metagraph(metagraph)

        tasks.append(asyncio.create_task(registry.refresh_forever(fetch, args.metagraph_refresh)))

    from kontext.errors import StartupError

    runtime = Runtime(settings)
    try:
        await runtime.start()
    except StartupError as exc:
        raise SystemExit(f"cannot start: {exc}") from None
    verifier = SignatureVerifier(hotkey.ss58_address, registry,
                                 on_reject=lambda reason: runtime.metrics.auth_rejections.labels(reason).inc())
    sidecar = create_app(settings, runtime=runtime, start_runtime=False,
                         verifier=verifier if settings.sidecar_require_signature else None)
    axon = create_axon_app(runtime, verifier, registry, health_extra=lambda: {
        "hotkey": hotkey.ss58_address, "netuid": args.netuid, "network": args.chain_endpoint or args.network})
    runners = [web.AppRunner(sidecar, access_log=None), web.AppRunner(axon, access_log=None)]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], settings.miner_server_host, settings.miner_server_port).start()
    await web.TCPSite(runners[1], args.axon_ip, args.axon_port).start()
    log.info("hotkey %s: sidecar on %s:%s, axon on %s:%s (%s)", hotkey.ss58_address, settings.miner_server_host,
             settings.miner_server_port, args.axon_ip, args.axon_port, "offline" if offline else args.network)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: no new jobs; finishing the running one")
    await runtime.quiesce(grace_seconds=60)
    for runner in runners:
        await runner.cleanup()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await runtime.stop(grace_seconds=0)
    if chain is not None:
        await chain.close()


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    from kontext.engine import determinism

    try:
        determinism.reexec_if_needed(sys.argv)
        determinism.ensure_environment()
    except determinism.DeterminismError as exc:
        raise SystemExit(f"cannot start: {exc}") from None
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
