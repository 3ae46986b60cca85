"""The miner neuron operators start with pm2: wallet, chain, the public door and the sidecar in one process."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # `python neurons/miner.py` as well as `python -m neurons.miner`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neurons.config import OFFLINE, chain_network, commit_endpoint, parse_args  # noqa: E402
from neurons.keys import load_hotkey  # noqa: E402

log = logging.getLogger("kontext.miner")


def _public_ip(args: Any) -> Optional[str]:
    if args.axon_external_ip:
        return args.axon_external_ip
    try:
        address = ipaddress.ip_address(args.axon_ip)
    except ValueError:
        return None
    return None if address.is_unspecified or address.is_private else args.axon_ip


def _settings(args: Any) -> Any:
    """Service settings from the environment and .env; the neuron's flags override them."""
    from kontext.settings import Settings

    return Settings.load(args.env_file, miner_server_host=args.sidecar_host, miner_server_port=args.sidecar_port,
                         axon_certfile=args.axon_certfile, axon_keyfile=args.axon_keyfile)


async def serve(args: Any, *, chain: Any = None) -> None:
    """Check the chain, then serve the door and the sidecar until SIGTERM/SIGINT (kontext.http.serve)."""
    from kontext.errors import StartupError
    from kontext.http.app import Door, create_app
    from kontext.http.serve import Listener
    from kontext.http.serve import serve as serve_listeners
    from kontext.http.tls import server_context
    from kontext.runtime import Runtime
    from neurons.auth import SignatureGate
    from neurons.chain import BittensorChain, ChainError, check_and_serve, ensure_commitment
    from neurons.commitment import CommitmentError
    from neurons.registry import Blacklist, ValidatorRegistry, load_offline_members, members_from_metagraph
    from neurons.synapses import routes as synapse_routes

    settings = _settings(args)
    if args.axon_port == settings.miner_server_port:
        raise StartupError(f"--axon.port {args.axon_port} must differ from the sidecar's port (--sidecar.port, "
                           "MINER_SERVER_PORT)")
    door_tls = server_context(settings.axon_certfile, settings.axon_keyfile)
    wallet, hotkey = load_hotkey(args)
    blacklist = Blacklist(force_validator_permit=args.force_validator_permit,
                          allow_non_registered=args.allow_non_registered)
    endpoint = chain_network(args)
    network = endpoint or OFFLINE
    tasks: list[asyncio.Task[Any]] = []
    if endpoint is None:
        registry = ValidatorRegistry(blacklist, load_offline_members(args.validators or ""), source=OFFLINE,
                                     own_hotkey=hotkey.ss58_address)
    else:
        chain = chain or BittensorChain(endpoint, wallet)
        port = args.axon_external_port or args.axon_port
        try:
            members = await check_and_serve(chain, netuid=args.netuid, hotkey=hotkey.ss58_address,
                                            ip=_public_ip(args), port=port, serve=not args.skip_serve_axon)
            if not args.skip_commit:
                commit_address, commit_port = commit_endpoint(args)
                log.info("%s", await ensure_commitment(chain, netuid=args.netuid, hotkey=hotkey.ss58_address,
                                                       address=commit_address, port=commit_port))
        except (ChainError, CommitmentError) as exc:
            raise StartupError(str(exc)) from None
        registry = ValidatorRegistry(blacklist, members, source=network, own_hotkey=hotkey.ss58_address)

        async def fetch() -> dict:
            metagraph = await chain.metagraph(args.netuid)
            if metagraph is None:
                raise ChainError(f"subnet {args.netuid} not found")
            return members_from_metagraph(metagraph)

        tasks.append(asyncio.create_task(registry.refresh_forever(fetch, args.metagraph_refresh)))

    runtime = Runtime(settings)
    signed = SignatureGate(hotkey.ss58_address, registry,
                           on_reject=lambda reason: runtime.metrics.auth_rejections.labels(reason).inc())

    def neuron_health() -> dict:
        return {"netuid": args.netuid, "network": network, "metagraph": registry.health()}

    door = Door("door", hotkey.ss58_address, neuron_health)
    sidecar = Door("sidecar", hotkey.ss58_address, neuron_health)
    listeners = [
        Listener("public door", create_app(runtime, gate=signed, door=door, extra_routes=synapse_routes),
                 args.axon_ip, args.axon_port, door_tls),
        Listener("sidecar", create_app(runtime, gate=signed if settings.sidecar_require_signature else None,
                                       door=sidecar),
                 settings.miner_server_host, settings.miner_server_port),
    ]
    log.info("hotkey %s on netuid %s (%s)", hotkey.ss58_address, args.netuid, network)
    try:
        await serve_listeners(runtime, listeners)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if chain is not None:
            await chain.close()


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    from kontext.process import run_server

    run_server("DEBUG" if args.debug else "INFO", lambda: serve(args))


if __name__ == "__main__":
    main()
