"""The chain seam with a fake chain: registration check, ServeAxon only when needed, refresh outages."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Optional

import pytest

from neurons.chain import ChainError, check_and_serve
from neurons.registry import Blacklist, Member, ValidatorRegistry, members_from_metagraph


@dataclass
class FakeNeuron:
    hotkey: str
    total_stake: float = 0.0
    validator_permit: bool = False
    axon: Optional[str] = None


@dataclass
class FakeMetagraph:
    neurons: list[FakeNeuron]

    def by_hotkey(self, hotkey: str) -> Optional[FakeNeuron]:
        return next((n for n in self.neurons if n.hotkey == hotkey), None)


@dataclass
class FakeChain:
    metagraph_value: Optional[FakeMetagraph]
    served: list[tuple[int, str, int]] = field(default_factory=list)
    fail: bool = False

    async def metagraph(self, netuid: int) -> Optional[FakeMetagraph]:
        if self.fail:
            raise ConnectionError("chain unreachable")
        return self.metagraph_value

    async def serve_axon(self, netuid: int, ip: str, port: int) -> None:
        self.served.append((netuid, ip, port))

    async def close(self) -> None:
        pass


GRAPH = FakeMetagraph([FakeNeuron("miner", axon="1.2.3.4:8901"), FakeNeuron("vali", 9000.0, True)])


async def test_serves_only_when_the_endpoint_changed() -> None:
    chain = FakeChain(GRAPH)
    members = await check_and_serve(chain, netuid=11, hotkey="miner", ip="1.2.3.4", port=8901)
    assert chain.served == [] and members["vali"] == Member("vali", 9000.0, True)
    await check_and_serve(chain, netuid=11, hotkey="miner", ip="5.6.7.8", port=8901)
    assert chain.served == [(11, "5.6.7.8", 8901)]


@pytest.mark.parametrize("graph, hotkey, ip, words", [
    (None, "miner", "1.2.3.4", "does not exist"),
    (GRAPH, "someone-else", "1.2.3.4", "not registered"),
    (GRAPH, "miner", None, "external_ip"),
])
async def test_clear_refusals(graph, hotkey, ip, words) -> None:
    with pytest.raises(ChainError, match=words):
        await check_and_serve(FakeChain(graph), netuid=11, hotkey=hotkey, ip=ip, port=8901)


async def test_refresh_outage_keeps_the_last_snapshot() -> None:
    chain = FakeChain(GRAPH)
    registry = ValidatorRegistry(Blacklist(), members_from_metagraph(GRAPH), source="test")

    async def fetch():
        return members_from_metagraph(await chain.metagraph(11))

    chain.fail = True
    task = asyncio.create_task(registry.refresh_forever(fetch, interval=0.01))
    await asyncio.sleep(0.1)
    assert registry.health()["stale"] and "unreachable" in registry.health()["last_error"]
    assert registry.refusal("vali") is None  # still served from the last snapshot
    chain.fail = False
    await asyncio.sleep(0.1)
    task.cancel()
    assert not registry.health()["stale"] and registry.stake("vali") == 9000.0
