"""The miner's few chain interactions (metagraph, registration check, ServeAxon), behind one seam."""

from __future__ import annotations

import logging
from typing import Any, Optional, Protocol

from neurons.registry import Member, members_from_metagraph

log = logging.getLogger(__name__)


class ChainError(RuntimeError):
    """The chain says this miner cannot serve (subnet missing, hotkey not registered...)."""


class Chain(Protocol):
    async def metagraph(self, netuid: int) -> Any: ...
    async def serve_axon(self, netuid: int, ip: str, port: int) -> None: ...
    async def close(self) -> None: ...


class BittensorChain:
    """bittensor 11's ``Client`` (connects lazily; reads are async)."""

    def __init__(self, network: str, wallet: Any) -> None:
        import bittensor as bt

        self._bt = bt
        self.wallet = wallet
        self.client = bt.Client(network)

    async def metagraph(self, netuid: int) -> Any:
        return await self.client.subnets.metagraph(netuid, commitments=False)

    async def serve_axon(self, netuid: int, ip: str, port: int) -> None:
        result = await self.client.execute(self._bt.ServeAxon(netuid=netuid, ip=ip, port=port), self.wallet)
        log.info("ServeAxon %s:%s on netuid %s: %s", ip, port, netuid, result)

    async def close(self) -> None:
        await self.client.close()


async def check_and_serve(chain: Chain, *, netuid: int, hotkey: str, ip: Optional[str], port: int,
                          serve: bool = True) -> dict[str, Member]:
    """Check the hotkey is registered, publish ip:port unless already current; return the members."""
    metagraph = await chain.metagraph(netuid)
    if metagraph is None:
        raise ChainError(f"subnet {netuid} does not exist on this network")
    me = metagraph.by_hotkey(hotkey)
    if me is None:
        raise ChainError(f"hotkey {hotkey} is not registered on netuid {netuid}; register it first "
                         "(btcli subnets register)")
    if serve:
        if not ip:
            raise ChainError("set --axon.external_ip: the public IP validators should reach (the axon binds "
                             "0.0.0.0)")
        endpoint = f"{ip}:{port}"
        if me.axon == endpoint:
            log.info("axon %s already published on netuid %s; not serving again", endpoint, netuid)
        else:
            await chain.serve_axon(netuid, ip, port)
    return members_from_metagraph(metagraph)
