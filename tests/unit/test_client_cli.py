"""kontext-client and kontext-commit answer every error in one line on stderr, with a non-zero exit: bad flags,
a closed port, a certificate that does not verify, a missing file or wallet, an HTTP error, a timeout.
kontext-commit's dry run needs no chain."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest
import trustme
from aiohttp import web

from kontext.client import cli
from kontext.client.http import Http
from kontext.client.oneline import ClientError
from neurons import commit
from tests.e2e.servers import ThreadedApp, free_port


def one_line_error(capsys: pytest.CaptureFixture[str], main: Callable[[Optional[Sequence[str]]], None],
                   argv: list[str]) -> tuple[int, str]:
    """(exit code, the one line the process prints on stderr); fails on anything but exactly one line."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    captured = capsys.readouterr()
    code = exited.value.code
    stderr = captured.err
    if isinstance(code, str):  # Python prints a SystemExit's message on stderr and exits 1
        stderr, code = stderr + code + "\n", 1
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert code != 0
    return int(code or 0), lines[0]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def miner(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A stand-in miner over HTTPS with a certificate of a private CA for 127.0.0.1 only: (base URL, CA file)."""
    async def status(request: web.Request) -> web.Response:
        return web.json_response({"error": "not_found", "message": f"no job {request.match_info['job_id']}"},
                                 status=404)

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(1)  # past the client's timeout; bounded, so the server stops without waiting long
        return web.Response(text="late")

    def make_app() -> web.Application:
        app = web.Application()
        app.router.add_get("/edit/status/{job_id}", status)
        app.router.add_get("/stall", stall)
        return app

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ThreadedApp(make_app, ssl_context=context).start()
    try:
        yield server.url, ca_file
    finally:
        server.stop()


def test_bad_arguments(capsys) -> None:
    code, line = one_line_error(capsys, cli.main, ["edit", "--seed", "x"])
    assert code == 2 and line == ("kontext-client edit: error: argument --seed: invalid int value: 'x' (see "
                                  "kontext-client edit --help)")
    code, line = one_line_error(capsys, cli.main, [])
    assert code == 2 and "required: command" in line
    code, line = one_line_error(capsys, commit.main, ["commit", "--commit.port", "eighty"])
    assert code == 2 and line.startswith("kontext-commit commit: error: argument --commit.port: invalid int value")


def test_closed_port(capsys) -> None:
    port = free_port()
    _, line = one_line_error(capsys, cli.main, ["--url", f"http://127.0.0.1:{port}", "status", "edit-x"])
    assert line == (f"kontext-client: cannot connect to 127.0.0.1:{port}: connection refused (is the miner running "
                    "and listening on this port?)")


def test_missing_input_file(capsys, tmp_path: Path) -> None:
    _, line = one_line_error(capsys, cli.main, ["edit", str(tmp_path / "none.png"), "--prompt", "p", "--seed", "1"])
    assert line == f"kontext-client: cannot read the input image {tmp_path / 'none.png'}: No such file or directory"


def test_missing_wallet(capsys, tmp_path: Path) -> None:
    _, line = one_line_error(capsys, cli.main, ["--axon", "https://127.0.0.1:1", "--miner-hotkey", "5Miner",
                                                "--wallet.path", str(tmp_path), "status", "edit-x"])
    assert line.startswith(f"kontext-client: cannot load hotkey default/default from {tmp_path}: ")


def test_missing_cacert(capsys, tmp_path: Path) -> None:
    _, line = one_line_error(capsys, cli.main, ["--cacert", str(tmp_path / "ca.pem"), "status", "edit-x"])
    assert line == f"kontext-client: --cacert {tmp_path / 'ca.pem'}: no such file"


def test_private_ca_without_cacert_then_an_http_error_with_it(capsys, miner) -> None:
    url, ca_file = miner
    _, line = one_line_error(capsys, cli.main, ["--url", url, "status", "edit-x"])
    assert line.startswith(f"kontext-client: the TLS certificate of {url.removeprefix('https://')} does not verify: ")
    assert line.endswith("(a private CA: pass --cacert CA.pem (validators trust only public CAs: use one for the "
                         "live door))")
    _, line = one_line_error(capsys, cli.main, ["--url", url, "--cacert", str(ca_file), "status", "edit-x"])
    assert line == f"kontext-client: GET {url}/edit/status/edit-x: the miner answered 404: no job edit-x"


def test_a_certificate_for_another_host_name(capsys, miner) -> None:
    url, ca_file = miner
    other = url.replace("127.0.0.1", "localhost")
    _, line = one_line_error(capsys, cli.main, ["--url", other, "--cacert", str(ca_file), "status", "edit-x"])
    assert "does not verify: Hostname mismatch" in line and "use a certificate that names localhost" in line


def test_a_timeout(miner) -> None:
    url, ca_file = miner
    with pytest.raises(ClientError, match=r"/stall: no answer within 0.2 s$"):
        Http(str(ca_file)).get(f"{url}/stall", timeout=0.2)


@pytest.fixture
def hotkey_only(tmp_path: Path) -> tuple[list[str], str]:
    """A wallet holding a hotkey and no coldkey."""
    import bittensor as bt

    wallet = bt.Wallet("ops", "hot", path=str(tmp_path / "wallets")).create_new_hotkey(use_password=False,
                                                                                       suppress=True)
    assert not Path(wallet.coldkey_file.path).exists()
    return ["--wallet.name", "ops", "--wallet.hotkey", "hot", "--wallet.path", str(tmp_path / "wallets")], \
        wallet.hotkey.ss58_address


def test_commit_dry_run_without_a_chain(capsys, hotkey_only) -> None:
    flags, hotkey = hotkey_only
    commit.main(["commit", "--dry-run", "--subtensor.network", "offline", "--netuid", "7", *flags,
                 "--commit.address", "miner.kontext.test", "--commit.port", "443"])
    assert capsys.readouterr().out.splitlines() == [
        f"netuid 7, hotkey {hotkey}: dry run: would write commitment 'miner.kontext.test:443' (on chain now: not "
        "read: --subtensor.network offline); nothing written",
        "would submit Commitments.set_commitment({'netuid': 7, 'info': {'fields': [{'Raw22': "
        f"b'miner.kontext.test:443'}}]}}}}) signed by the hotkey {hotkey}",
    ]


class UnreachableChain:
    """A chain whose every read fails as a dropped connection does (not a bittensor error)."""

    closed = False

    async def commitment(self, netuid: int, hotkey: str) -> Any:
        raise ConnectionResetError("connection reset by peer")

    async def commitments(self, netuid: int) -> Any:
        raise ConnectionResetError("connection reset by peer")

    async def close(self) -> None:
        self.closed = True


def test_commit_dry_run_with_an_unreachable_chain(capsys, hotkey_only) -> None:
    flags, _ = hotkey_only
    chain = UnreachableChain()
    commit.main(["commit", "--dry-run", *flags, "--commit.address", "1.2.3.4"], chain=chain)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert ("(on chain now: not read: chain finney unreachable: ConnectionResetError: connection reset by peer); "
            "nothing written") in out and "would submit Commitments.set_commitment(" in out
    assert chain.closed


def test_commit_a_dropped_chain_connection_is_one_line(capsys, hotkey_only) -> None:
    flags, _ = hotkey_only
    _, line = one_line_error(capsys, lambda argv: commit.main(argv, chain=UnreachableChain()),  # type: ignore[arg-type]
                             ["read", *flags])
    assert line == "kontext-commit: ConnectionResetError: connection reset by peer"


def test_commit_missing_wallet(capsys, tmp_path: Path) -> None:
    _, line = one_line_error(capsys, commit.main, ["commit", "--dry-run", "--subtensor.network", "offline",
                                                   "--wallet.path", str(tmp_path), "--commit.address", "1.2.3.4"])
    assert line.startswith(f"kontext-commit: cannot load hotkey default/default from {tmp_path}: ")
