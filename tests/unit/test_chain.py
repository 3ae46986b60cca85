"""The chain seam with a fake chain: registration check, ServeAxon and the commitment only when needed, refresh
outages, the commitment on start and the kontext-commit tool."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from kontext.errors import StartupError

from neurons.chain import ChainError, check_and_serve, ensure_commitment, set_commitment_call
from neurons.commitment import CommitmentError, validator_text
from neurons.registry import Blacklist, Member, ValidatorRegistry, members_from_metagraph
from tests.commitments_runtime import stored_value


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
    """Commitments are kept as CommitmentOf values decoded the way bittensor 11 returns them."""

    metagraph_value: Optional[FakeMetagraph]
    served: list[tuple[int, str, int]] = field(default_factory=list)
    fail: bool = False
    signer: str = "miner"
    stored: dict[tuple[int, str], Any] = field(default_factory=dict)
    committed: list[tuple[int, str]] = field(default_factory=list)
    reject: Optional[str] = None
    closed: bool = False

    async def metagraph(self, netuid: int) -> Optional[FakeMetagraph]:
        if self.fail:
            raise ConnectionError("chain unreachable")
        return self.metagraph_value

    async def serve_axon(self, netuid: int, ip: str, port: int) -> None:
        self.served.append((netuid, ip, port))

    async def commitment(self, netuid: int, hotkey: str) -> Optional[str]:
        return validator_text(self.stored.get((netuid, hotkey)))

    async def commitments(self, netuid: int) -> dict[str, str]:
        texts = {hotkey: validator_text(value) for (n, hotkey), value in self.stored.items() if n == netuid}
        return {hotkey: text for hotkey, text in texts.items() if text is not None}

    async def set_commitment(self, netuid: int, text: str) -> None:
        if self.reject:
            raise ChainError(self.reject)
        self.committed.append((netuid, text))
        self.stored[(netuid, self.signer)] = stored_value(set_commitment_call(netuid, text))

    async def close(self) -> None:
        self.closed = True


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


# The commitment -------------------------------------------------------------------------------------------------

UNREADABLE = {"deposit": 0, "block": 3, "info": {"fields": [{"Sha256": "0x" + "00" * 32}]}}


async def test_commitment_written_when_absent_then_left_alone() -> None:
    chain = FakeChain(GRAPH)
    outcome = await ensure_commitment(chain, netuid=11, hotkey="miner", address="1.2.3.4", port=8901)
    assert (outcome.action, outcome.text, outcome.previous) == ("written", "1.2.3.4:8901", None)
    assert chain.committed == [(11, "1.2.3.4:8901")]
    value = chain.stored[(11, "miner")]
    assert value["info"]["fields"] == [{"Raw12": "0x" + b"1.2.3.4:8901".hex()}]  # bittensor 11's decoded shape
    assert validator_text(value) == "1.2.3.4:8901"
    again = await ensure_commitment(chain, netuid=11, hotkey="miner", address="1.2.3.4", port=8901)
    assert again.action == "unchanged" and "nothing written" in str(again)
    assert chain.committed == [(11, "1.2.3.4:8901")]


@pytest.mark.parametrize("before, previous", [
    (stored_value(set_commitment_call(11, "5.6.7.8:8901")), "5.6.7.8:8901"),
    (UNREADABLE, None),
])
async def test_commitment_written_when_different(before: Any, previous: Optional[str]) -> None:
    chain = FakeChain(GRAPH, stored={(11, "miner"): before})
    outcome = await ensure_commitment(chain, netuid=11, hotkey="miner", address="miner.kontext.test", port=443)
    assert (outcome.action, outcome.previous) == ("written", previous)
    assert chain.committed == [(11, "miner.kontext.test:443")]
    assert await chain.commitment(11, "miner") == "miner.kontext.test:443"


async def test_dry_run_writes_nothing() -> None:
    chain = FakeChain(GRAPH, stored={(11, "miner"): stored_value(set_commitment_call(11, "5.6.7.8:8901"))})
    outcome = await ensure_commitment(chain, netuid=11, hotkey="miner", address="1.2.3.4", port=8901, dry_run=True)
    assert (outcome.action, outcome.text, outcome.previous) == ("dry-run", "1.2.3.4:8901", "5.6.7.8:8901")
    assert "would write commitment '1.2.3.4:8901'" in str(outcome)
    assert chain.committed == [] and await chain.commitment(11, "miner") == "5.6.7.8:8901"


async def test_unparseable_address_refused_before_the_chain_is_touched() -> None:
    chain = FakeChain(GRAPH)
    with pytest.raises(CommitmentError, match="IPv6"):
        await ensure_commitment(chain, netuid=11, hotkey="miner", address="2001:db8::1", port=8901)
    assert chain.committed == []


class FakeClient:
    """The slice of bittensor 11's Client that BittensorChain uses for commitments; calls go through the codec."""

    def __init__(self, *, success: bool = True) -> None:
        self.success = success
        self.values: dict[tuple[int, str], Any] = {(11, "other"): UNREADABLE}
        self.submitted: list[tuple[Any, Any, str]] = []
        self.connects = 0

    async def connect(self) -> Any:
        self.connects += 1
        return self

    def _ready(self) -> None:
        import bittensor as bt

        if not self.connects:  # as the real client: no connection until connect()
            raise bt.ConnectionNotReady("Client connection is not open")

    async def query(self, item: Any, params: list) -> Any:
        self._ready()
        assert tuple(item) == ("Commitments", "CommitmentOf")
        return self.values.get((params[0], params[1]))

    async def query_map(self, item: Any, params: list) -> list[tuple[str, Any]]:
        self._ready()
        assert tuple(item) == ("Commitments", "CommitmentOf")
        return [(hotkey, value) for (netuid, hotkey), value in self.values.items() if netuid == params[0]]

    async def submit_call(self, call: Any, wallet: Any, *, signer: str = "coldkey") -> Any:
        import bittensor as bt

        self._ready()
        self.submitted.append((call, wallet, signer))
        if self.success:
            self.values[(call.params["netuid"], wallet.hotkey.ss58_address)] = stored_value(call)
        return bt.ExtrinsicResult(success=self.success, message="" if self.success else "SpaceLimitExceeded")


def _bittensor_chain(client: FakeClient) -> Any:
    from types import SimpleNamespace

    from neurons.chain import BittensorChain

    chain = BittensorChain("ws://127.0.0.1:9", SimpleNamespace(hotkey=SimpleNamespace(ss58_address="miner")))
    chain.client = client  # type: ignore[assignment]
    return chain


async def test_bittensor_chain_submits_the_raw_call_signed_by_the_hotkey() -> None:
    import bittensor as bt

    client = FakeClient()
    chain = _bittensor_chain(client)
    assert await chain.commitment(11, "miner") is None
    await chain.set_commitment(11, "1.2.3.4:8901")
    [(call, wallet, signer)] = client.submitted
    assert call == bt.calls.Commitments.set_commitment(netuid=11, info={"fields": [{"Raw12": b"1.2.3.4:8901"}]})
    assert signer == "hotkey" and wallet is chain.wallet
    assert await chain.commitment(11, "miner") == "1.2.3.4:8901"
    assert await chain.commitments(11) == {"miner": "1.2.3.4:8901"}  # "other" holds no Raw field
    assert client.connects == 1  # connected on first use, once


async def test_bittensor_chain_connects_before_it_reads_and_names_an_unreachable_chain() -> None:
    """bittensor 11's Client opens its connection only on connect(): a read before it raised
    ConnectionNotReady on every real network, so the miner could never start (nor kontext-commit run)."""
    import socket
    from types import SimpleNamespace

    from neurons.chain import BittensorChain

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    chain = BittensorChain(f"ws://127.0.0.1:{port}", SimpleNamespace(hotkey=SimpleNamespace(ss58_address="m")))
    with pytest.raises(ChainError, match=rf"chain ws://127.0.0.1:{port}: could not connect"):
        await chain.metagraph(11)
    await chain.close()


async def test_bittensor_chain_failed_extrinsic_is_a_chain_error() -> None:
    chain = _bittensor_chain(FakeClient(success=False))
    with pytest.raises(ChainError, match="SpaceLimitExceeded"):
        await chain.set_commitment(11, "1.2.3.4:8901")


# On start and in kontext-commit: a real wallet on disk, the fake chain injected --------------------------------

@pytest.fixture
def wallet(tmp_path: Any) -> tuple[list[str], str]:
    """Wallet flags for a fresh unencrypted hotkey, and its ss58 address."""
    import bittensor as bt

    path = str(tmp_path / "wallets")
    keys = bt.Wallet("w", "h", path=path).create_new_hotkey(suppress=True)
    return ["--wallet.name", "w", "--wallet.hotkey", "h", "--wallet.path", path], keys.hotkey.ss58_address


@pytest.fixture
def miner_argv(tmp_path: Any, wallet: tuple[list[str], str]) -> list[str]:
    """Miner flags whose service settings fail fast at runtime start (DATA_DIR is a file): serve() stops right
    after the chain steps, with a StartupError naming DATA_DIR."""
    (tmp_path / "not-a-dir").write_text("")
    (tmp_path / "miner.env").write_text(f"DATA_DIR={tmp_path / 'not-a-dir'}\n")
    return [*wallet[0], "--env-file", str(tmp_path / "miner.env"), "--subtensor.network", "test"]


def _registered(hotkey: str) -> FakeChain:
    return FakeChain(FakeMetagraph([FakeNeuron(hotkey, axon="1.2.3.4:8901")]), signer=hotkey)


@pytest.mark.parametrize("flags, text", [
    (["--axon.external_ip", "1.2.3.4"], "1.2.3.4:8901"),
    (["--axon.external_ip", "1.2.3.4", "--axon.external_port", "9000"], "1.2.3.4:9000"),
    (["--axon.external_ip", "1.2.3.4", "--commit.address", "miner.kontext.test", "--commit.port", "443"],
     "miner.kontext.test:443"),
])
async def test_start_commits_after_the_registration_check(miner_argv, wallet, flags, text) -> None:
    from neurons.config import parse_args
    from neurons.miner import serve

    chain = _registered(wallet[1])
    with pytest.raises(StartupError, match="DATA_DIR"):
        await serve(parse_args([*miner_argv, *flags]), chain=chain)
    assert chain.committed == [(11, text)]


@pytest.mark.parametrize("flags, words", [
    (["--neuron.skip_serve_axon"], "--commit.address \\(COMMIT_ADDRESS\\)"),
    (["--axon.external_ip", "1.2.3.4", "--commit.address", "::1"], "IPv6"),
])
async def test_start_refuses_what_cannot_be_committed(miner_argv, wallet, flags, words) -> None:
    from neurons.config import parse_args
    from neurons.miner import serve

    chain = _registered(wallet[1])
    with pytest.raises(StartupError, match=words):  # `cannot start: ...`, exit 2, as every start-up refusal
        await serve(parse_args([*miner_argv, *flags]), chain=chain)
    assert chain.committed == []


@pytest.mark.parametrize("flags", [
    ["--axon.external_ip", "1.2.3.4", "--neuron.skip_commit"],
    ["--subtensor.network", "offline"],
])
async def test_start_without_committing(miner_argv, wallet, flags) -> None:
    from neurons.config import parse_args
    from neurons.miner import serve

    chain = _registered(wallet[1])
    with pytest.raises(StartupError, match="DATA_DIR"):
        await serve(parse_args([*miner_argv, *flags]), chain=chain)
    assert chain.committed == []


def _commit_tool(argv: list[str], chain: FakeChain) -> None:
    from neurons.commit import main

    main(argv, chain=chain)


def test_read_prints_the_subnet_and_this_hotkey(wallet, capsys) -> None:
    hotkey = wallet[1]
    chain = _registered(hotkey)
    chain.stored = {(11, hotkey): stored_value(set_commitment_call(11, "1.2.3.4:8901")),
                    (11, "other"): stored_value(set_commitment_call(11, "5.6.7.8:9000")),
                    (11, "v6"): stored_value(set_commitment_call(11, "::1:8901")),
                    (11, "sealed"): UNREADABLE,
                    (12, "elsewhere"): stored_value(set_commitment_call(12, "9.9.9.9:1"))}
    _commit_tool(["read", *wallet[0]], chain)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "netuid 11: 3 commitment(s) the validator can read"
    assert "other  '5.6.7.8:9000'  ok https://5.6.7.8:9000" in lines
    assert any(line.startswith("v6  '::1:8901'  UNUSABLE: port ':1:8901' is not a number") for line in lines)
    assert lines[-1] == f"this hotkey {hotkey}: '1.2.3.4:8901'  ok https://1.2.3.4:8901"
    assert chain.committed == [] and chain.closed


def test_read_without_own_commitment(wallet, capsys) -> None:
    _commit_tool(["read", *wallet[0]], _registered(wallet[1]))
    assert capsys.readouterr().out.splitlines()[-1] == f"this hotkey {wallet[1]}: no commitment"


def test_commit_writes_once(wallet, capsys) -> None:
    chain = _registered(wallet[1])
    argv = ["commit", *wallet[0], "--axon.external_ip", "1.2.3.4"]
    _commit_tool(argv, chain)
    assert "wrote commitment '1.2.3.4:8901' (none before)" in capsys.readouterr().out
    _commit_tool(argv, chain)
    assert "already on chain; nothing written" in capsys.readouterr().out
    assert chain.committed == [(11, "1.2.3.4:8901")]
    assert validator_text(chain.stored[(11, wallet[1])]) == "1.2.3.4:8901"


def test_commit_dry_run_prints_exactly_what_would_be_written(wallet, capsys) -> None:
    chain = _registered(wallet[1])
    _commit_tool(["commit", "--dry-run", *wallet[0], "--netuid", "7", "--commit.address", "miner.kontext.test",
                  "--commit.port", "443"], chain)
    out = capsys.readouterr().out
    assert "dry run: would write commitment 'miner.kontext.test:443'" in out
    assert ("would submit Commitments.set_commitment({'netuid': 7, 'info': {'fields': [{'Raw22': "
            "b'miner.kontext.test:443'}]}}) signed by the hotkey") in out
    assert chain.committed == [] and chain.stored == {}


@pytest.mark.parametrize("argv, words", [
    (["read", "--subtensor.network", "offline"], "offline has no chain"),
    (["commit"], "commit: no address to commit: set --commit.address"),
    (["commit", "--commit.address", "2001:db8::1"], "commit: address '2001:db8::1' is IPv6"),
    (["commit", "--commit.address", "1.2.3.4", "--commit.port", "0"], "1..65535"),
    (["read", "--wallet.name", "missing"], "cannot load hotkey missing/h"),
])
def test_commit_tool_errors(wallet, argv, words) -> None:
    chain = _registered(wallet[1])
    with pytest.raises(SystemExit, match=words):
        _commit_tool([*argv[:1], *wallet[0], *argv[1:]], chain)
    assert chain.committed == []


def test_commit_tool_reports_a_chain_refusal(wallet) -> None:
    chain = _registered(wallet[1])
    chain.reject = "AccountNotAllowedCommit"
    with pytest.raises(SystemExit, match="commit: AccountNotAllowedCommit"):
        _commit_tool(["commit", *wallet[0], "--axon.external_ip", "1.2.3.4"], chain)
    assert chain.closed


@pytest.mark.parametrize("env, flags, words", [
    ("MINER_SERVER_PORT=8901\n", [], "--axon.port 8901 must differ"),  # the sidecar's port from .env counts too
    ("", ["--sidecar.port", "0"], "MINER_SERVER_PORT"),  # a flag given as 0 is checked, not ignored
    ("KONTEXT_LOAD=lazy\n", [], "KONTEXT_LOAD=lazy: /capacity would say false until a first job"),  # never a job
])
async def test_start_refuses_settings_that_cannot_work(tmp_path, wallet, env, flags, words) -> None:
    from neurons.config import parse_args
    from neurons.miner import serve

    (tmp_path / "ports.env").write_text(env)
    chain = _registered(wallet[1])
    with pytest.raises(StartupError, match=words):
        await serve(parse_args([*wallet[0], "--env-file", str(tmp_path / "ports.env"), "--subtensor.network", "test",
                                *flags]), chain=chain)
    assert chain.committed == []


def test_the_miner_on_an_unreachable_chain_stops_with_one_line_and_exit_2(miner_argv: list[str]) -> None:
    """Every start-up refusal (settings, TLS, wallet, chain) is one `cannot start:` line and exit 2, for pm2 logs."""
    import socket
    import subprocess
    import sys

    from tests.e2e.servers import REPO_ROOT

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [*miner_argv[:-2], "--subtensor.chain_endpoint", f"ws://127.0.0.1:{port}"]
    result = subprocess.run([sys.executable, "neurons/miner.py", *argv], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, env={**__import__("os").environ, "PYTHONHASHSEED": "0"})
    assert result.returncode == 2, result.stderr
    assert f"cannot start: chain ws://127.0.0.1:{port}: could not connect" in result.stderr
    assert "Traceback" not in result.stderr
