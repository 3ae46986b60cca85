"""The miner neuron operators start with pm2: wallet, chain, the public door and a loopback sidecar in one process."""

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

from neurons.config import parse_args, settings_from  # noqa: E402
from neurons.keys import load_hotkey  # noqa: E402
from neurons.settings import NeuronSettings  # noqa: E402

log = logging.getLogger("kontext.miner")


def sidecar_signed(settings: NeuronSettings) -> bool:
    """Whether the sidecar's job routes need signatures: always off loopback (no unsigned job route on the network);
    on loopback, as SIDECAR_REQUIRE_SIGNATURE says (unset: the seed's unsigned contract, for local tools)."""
    from kontext.errors import StartupError
    from kontext.http.serve import is_loopback

    if is_loopback(settings.miner_server_host):
        return bool(settings.sidecar_require_signature)
    if settings.sidecar_require_signature is False:
        raise StartupError(f"the sidecar would serve unsigned job routes on {settings.miner_server_host}, which is not "
                           "loopback: anyone reaching it could fill the queue. Bind it to 127.0.0.1 "
                           "(MINER_SERVER_HOST) or remove SIDECAR_REQUIRE_SIGNATURE=false")
    return True


def _public_ip(settings: NeuronSettings) -> Optional[str]:
    if settings.axon_external_ip:
        return settings.axon_external_ip
    try:
        address = ipaddress.ip_address(settings.axon_ip)
    except ValueError:
        return None
    return None if address.is_unspecified or address.is_private else settings.axon_ip


async def serve(args: Any, *, chain: Any = None) -> None:
    """Check everything that can be checked, take the ports, then the chain; serve the door and the sidecar until
    SIGTERM/SIGINT (kontext.http.serve). Any refusal is a ``StartupError``: one ``cannot start:`` line, exit 2."""
    from kontext.errors import StartupError
    from kontext.http.app import Door, create_app
    from kontext.http.serve import Listener, bind, release
    from kontext.http.serve import serve as serve_listeners
    from kontext.http.tls import server_context
    from kontext.process import set_level
    from kontext.runtime import Runtime
    from neurons.auth import SignatureGate
    from neurons.chain import BittensorChain, ChainError, check_and_serve, ensure_commitment
    from neurons.commitment import CommitmentError
    from neurons.registry import Blacklist, ValidatorRegistry, load_offline_members, members_from_metagraph
    from neurons.synapses import routes as synapse_routes

    settings = settings_from(args).with_public_urls()
    set_level(settings.log_level)
    # 1. what needs no chain and no model: ports, TLS files, the sidecar's exposure, the wallet
    if settings.axon_port == settings.miner_server_port:
        raise StartupError(f"--axon.port {settings.axon_port} must differ from the sidecar's port (--sidecar.port, "
                           "MINER_SERVER_PORT)")
    if settings.kontext_load == "lazy":
        raise StartupError("KONTEXT_LOAD=lazy: /capacity would say false until a first job loaded the engine, and a "
                           "validator sends no job to a miner without capacity, so it would never load. Remove it "
                           "(eager, the default, loads at start)")
    door_tls = server_context(settings.axon_certfile, settings.axon_keyfile)
    sidecar_gated = sidecar_signed(settings)
    wallet, hotkey = load_hotkey(settings)
    try:
        members = load_offline_members(settings.neuron_validators or "") if settings.chain is None else None
    except (OSError, ValueError) as exc:  # a JSON file that cannot be read, or an entry that is not a hotkey
        raise StartupError(f"NEURON_VALIDATORS: {exc}") from None
    blacklist = Blacklist(force_validator_permit=settings.blacklist_force_validator_permit,
                          allow_non_registered=settings.blacklist_allow_non_registered)
    registry = ValidatorRegistry(blacklist, members, source=settings.network, own_hotkey=hotkey.ss58_address)
    runtime = Runtime(settings)
    signed = SignatureGate(hotkey.ss58_address, registry,
                           on_reject=lambda reason: runtime.metrics.auth_rejections.labels(reason).inc())

    def neuron_health() -> dict:
        return {**settings.describe(), "metagraph": registry.health()}

    listeners = bind([
        Listener("public door", create_app(runtime, gate=signed, door=Door("door", hotkey.ss58_address, neuron_health),
                                           extra_routes=synapse_routes),
                 settings.axon_ip, settings.axon_port, door_tls),
        Listener("sidecar", create_app(runtime, gate=signed if sidecar_gated else None,
                                       door=Door("sidecar", hotkey.ss58_address, neuron_health)),
                 settings.miner_server_host, settings.miner_server_port),
    ])
    # 2. the chain: registered, ServeAxon and the commitment (only what changed is written)
    tasks: list[asyncio.Task[Any]] = []
    if settings.chain is not None:
        chain = chain or BittensorChain(settings.chain, wallet)
        try:
            registry.replace(await check_and_serve(chain, netuid=settings.netuid, hotkey=hotkey.ss58_address,
                                                   ip=_public_ip(settings),
                                                   port=settings.axon_external_port or settings.axon_port,
                                                   serve=not settings.neuron_skip_serve_axon))
            if not settings.neuron_skip_commit:
                address, port = settings.commit_endpoint()
                log.info("%s", await ensure_commitment(chain, netuid=settings.netuid, hotkey=hotkey.ss58_address,
                                                       address=address, port=port))
        except (ChainError, CommitmentError) as exc:
            release(listeners)
            raise StartupError(str(exc)) from None

        async def fetch() -> dict:
            metagraph = await chain.metagraph(settings.netuid)
            if metagraph is None:
                raise ChainError(f"subnet {settings.netuid} not found")
            return members_from_metagraph(metagraph)

        tasks.append(asyncio.create_task(registry.refresh_forever(fetch, settings.neuron_metagraph_refresh_seconds)))
    # 3. say what is in force, then serve
    log.info("hotkey %s on netuid %s (%s); results at %s/images/edits/", hotkey.ss58_address, settings.netuid,
             settings.network, settings.public_base_url)
    log.info("public door %s: job routes signed (Epistula or btauth/1); sidecar %s: job routes %s",
             listeners[0].url, listeners[1].url, "signed" if sidecar_gated else "unsigned (loopback only)")
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

    run_server(args.env_file, lambda: serve(args))


if __name__ == "__main__":
    main()
