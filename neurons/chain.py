"""The miner's few chain interactions (metagraph, registration check, ServeAxon, commitment), behind one seam."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal, Optional, Protocol

from neurons.commitment import commitment_info, commitment_text, validator_text
from neurons.registry import Member, members_from_metagraph

log = logging.getLogger(__name__)


class ChainError(RuntimeError):
    """The chain says this miner cannot serve (subnet missing, hotkey not registered...)."""


class Chain(Protocol):
    async def metagraph(self, netuid: int) -> Any: ...
    async def serve_axon(self, netuid: int, ip: str, port: int) -> None: ...
    async def commitment(self, netuid: int, hotkey: str) -> Optional[str]:
        """What the validator reads from ``hotkey``'s commitment, or None."""
        ...
    async def commitments(self, netuid: int) -> dict[str, str]:
        """hotkey -> what the validator reads, for every commitment it can read on the subnet."""
        ...
    async def set_commitment(self, netuid: int, text: str) -> None:
        """Publish ``text`` as this hotkey's commitment (signed by the hotkey)."""
        ...
    async def close(self) -> None: ...


def set_commitment_call(netuid: int, text: str) -> Any:
    """The raw ``Commitments.set_commitment`` call publishing ``text`` (bittensor 11 has no intent for it)."""
    import bittensor as bt

    return bt.calls.Commitments.set_commitment(netuid=netuid, info=commitment_info(text))


class BittensorChain:
    """bittensor 11's ``Client``, connected on first use; its errors become ``ChainError`` naming the network."""

    def __init__(self, network: str, wallet: Any) -> None:
        import bittensor as bt

        self._bt = bt
        self.network = network
        self.wallet = wallet
        self.client = bt.Client(network)
        self._connected = False
        self._connecting = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[Any]:
        """The connected client. bittensor 11 opens the connection only on ``connect()``: a read before it
        raises ``ConnectionNotReady``. ``connect()`` also reads the subnets' token symbols, so it runs once."""
        try:
            async with self._connecting:
                if not self._connected:
                    await self.client.connect()
                    self._connected = True
            yield self.client
        except self._bt.BittensorError as exc:
            raise ChainError(f"chain {self.network}: {exc}") from exc

    async def metagraph(self, netuid: int) -> Any:
        async with self._open() as client:
            return await client.subnets.metagraph(netuid, commitments=False)

    async def serve_axon(self, netuid: int, ip: str, port: int) -> None:
        async with self._open() as client:
            result = await client.execute(self._bt.ServeAxon(netuid=netuid, ip=ip, port=port), self.wallet)
        log.info("ServeAxon %s:%s on netuid %s: %s", ip, port, netuid, result)

    async def commitment(self, netuid: int, hotkey: str) -> Optional[str]:
        item = self._bt.storage.Commitments.CommitmentOf
        async with self._open() as client:
            return validator_text(await client.query(item, [netuid, hotkey]))

    async def commitments(self, netuid: int) -> dict[str, str]:
        item = self._bt.storage.Commitments.CommitmentOf
        async with self._open() as client:
            pairs = await client.query_map(item, [netuid])
        texts = {str(hotkey): validator_text(value) for hotkey, value in pairs}
        return {hotkey: text for hotkey, text in texts.items() if text is not None}

    async def set_commitment(self, netuid: int, text: str) -> None:
        async with self._open() as client:
            result = await client.submit_call(set_commitment_call(netuid, text), self.wallet, signer="hotkey")
        if not result.success:
            raise ChainError(f"set_commitment {text!r} on netuid {netuid} failed: {result.message}")
        log.info("set_commitment %r on netuid %s: %s", text, netuid, result)

    async def close(self) -> None:
        if self._connected:
            await self.client.close()
            self._connected = False


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


@dataclass(frozen=True)
class CommitOutcome:
    """What ``ensure_commitment`` did, for the log and the CLI."""

    action: Literal["written", "unchanged", "dry-run"]
    text: str
    previous: Optional[str]

    def __str__(self) -> str:
        if self.action == "unchanged":
            return f"commitment {self.text!r} is already on chain; nothing written"
        if self.action == "dry-run":
            return f"dry run: would write commitment {self.text!r} (on chain now: {self.previous!r}); nothing written"
        return f"wrote commitment {self.text!r} (" + (f"was {self.previous!r})" if self.previous else "none before)")


async def ensure_commitment(chain: Chain, *, netuid: int, hotkey: str, address: str, port: int,
                            dry_run: bool = False) -> CommitOutcome:
    """Publish ``address:port`` unless validators already read exactly that (each write costs a transaction).

    Raises CommitmentError for an address:port the validator could not parse, before touching the chain.
    """
    text = commitment_text(address, port)
    previous = await chain.commitment(netuid, hotkey)
    if previous == text:
        return CommitOutcome("unchanged", text, previous)
    if dry_run:
        return CommitOutcome("dry-run", text, previous)
    await chain.set_commitment(netuid, text)
    return CommitOutcome("written", text, previous)
