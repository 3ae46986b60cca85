"""The shared start-up path: listeners, TLS, malformed HTTP, a clean stop that answers every open request, clear
start-up errors."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from pathlib import Path

import aiohttp
import pytest
import trustme

from kontext.errors import StartupError
from kontext.http.app import create_app
from kontext.http.serve import Listener, serve
from kontext.http.tls import server_context
from kontext.runtime import Runtime
from tests.e2e.servers import free_port
from tests.fakes import FakeEngine
from tests.unit.test_sidecar import IMAGE_B64, make_settings
from tests.waiting import until, workers_running


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _pem_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


def test_tls_start_up_errors_name_the_problem(ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = _pem_files(ca, tmp_path)
    assert server_context(None, None) is None
    with pytest.raises(StartupError, match="both --axon.certfile and --axon.keyfile"):
        server_context(certfile, None)
    with pytest.raises(StartupError, match="cannot be read"):
        server_context(tmp_path / "missing.pem", keyfile)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(StartupError, match="not usable"):
        server_context(garbage, keyfile)
    other_key = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(StartupError, match="not usable"):
        server_context(certfile, other_key)
    assert isinstance(server_context(certfile, keyfile), ssl.SSLContext)


async def test_serve_https_then_stop_cleanly(ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = _pem_files(ca, tmp_path)
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    port, stop = free_port(), asyncio.Event()
    listener = Listener("door", create_app(runtime), "127.0.0.1", port, server_context(certfile, keyfile))
    task = asyncio.ensure_future(serve(runtime, [listener], stop=stop))
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"https://127.0.0.1:{port}/", ssl=client_ssl) as response:
                    assert response.status == 200 and (await response.json())["service"] == "kontext-miner"
                    break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("door never answered")
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # verification is on: an unknown CA fails
            await session.get(f"https://127.0.0.1:{port}/")
    stop.set()
    await asyncio.wait_for(task, 10)
    with pytest.raises(RuntimeError, match="not open"):
        _ = runtime.store.db  # the store was closed by the shutdown path


async def test_a_taken_port_is_a_start_up_error(tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            await serve(runtime, [Listener("sidecar", create_app(runtime), "127.0.0.1", port)])
    finally:
        blocker.close()


async def _started(port: int) -> None:
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.02)
    raise AssertionError("the listener never opened")


MALFORMED = [
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",  # a header over the limit
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a request line over the limit
    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",  # a header line without a colon
    b"POST /edit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",  # chunk size
    b"POST /edit HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Encoding: br\r\n\r\n{}",  # unsupported
]


async def test_malformed_http_gets_aiohttps_own_4xx_and_one_log_line(tmp_path: Path, caplog) -> None:
    """Requests whose HTTP framing aiohttp cannot parse never reach the app's middleware, so they are answered by
    aiohttp itself: a plain-text 4xx and a closed connection (never a 500, never a dropped connection). aiohttp has
    no public hook for that page; the miner no longer overrides its private ``_make_server`` to render it as JSON.
    Each is logged on one line, without aiohttp's traceback at ERROR."""
    caplog.set_level(logging.INFO)
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    port, stop = free_port(), asyncio.Event()
    task = asyncio.ensure_future(serve(runtime, [Listener("sidecar", create_app(runtime), "127.0.0.1", port)],
                                       stop=stop))
    await _started(port)
    for request in MALFORMED:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # to the end: the server closes the connection
        writer.close()
        status = int(raw.split(b" ")[1])
        assert 400 <= status < 500, raw[:200]
    stop.set()
    await asyncio.wait_for(task, 10)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING or record.exc_info]
    assert len([r for r in caplog.records if "malformed request" in r.getMessage()]) == len(MALFORMED)


async def test_a_stop_answers_every_open_sync_edit(tmp_path: Path) -> None:
    """SIGTERM with /sync/edit requests open: the one whose job finishes within the grace gets its PNG, the one whose
    job was still queued gets 503 with its job id. The second was a dropped connection, with no answer."""
    gate = threading.Event()
    runtime = Runtime(make_settings(tmp_path, shutdown_grace_seconds=30), engine=FakeEngine(gate=gate))
    port, stop = free_port(), asyncio.Event()
    task = asyncio.ensure_future(serve(runtime, [Listener("sidecar", create_app(runtime), "127.0.0.1", port)],
                                       stop=stop))
    await _started(port)
    body = {"prompt": "p", "image_b64": IMAGE_B64, "num_inference_steps": 2}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        running = asyncio.ensure_future(session.post("/sync/edit", json={**body, "seed": 1, "job_id": "sync-run"}))
        await until(workers_running(runtime, 1), what="the first job runs")
        queued = asyncio.ensure_future(session.post("/sync/edit", json={**body, "seed": 2, "job_id": "sync-wait"}))
        await until(lambda: _queued(runtime, "sync-wait"), what="the second job is queued")
        stop.set()  # what SIGTERM does
        await until(lambda: _stopping(runtime), what="the drain began")
        gate.set()  # the running job finishes inside the grace period
        finished, cut_short = await asyncio.wait_for(running, 30), await asyncio.wait_for(queued, 30)
        assert finished.status == 200 and finished.headers["X-Job-ID"] == "sync-run"
        assert (await finished.read()).startswith(b"\x89PNG")
        error = await cut_short.json()
        assert cut_short.status == 503 and error["error"] == "service_unavailable" and error["job_id"] == "sync-wait"
        assert "fetch it later from /edit/status/sync-wait" in error["message"] and cut_short.headers["Retry-After"]
    await asyncio.wait_for(task, 30)


async def _queued(runtime: Runtime, job_id: str) -> bool:
    """Waiting: in the queue, or taken ahead by the worker (prepared, not on the device)."""
    from kontext.errors import JobNotFound

    try:
        return (await runtime.service.status(job_id)).queue_position is not None
    except JobNotFound:  # not submitted yet
        return False


async def _stopping(runtime: Runtime) -> bool:
    return not runtime.service.accepting


async def test_the_worker_app_serves_health_and_the_same_metrics_as_a_door(aiohttp_client, tmp_path: Path) -> None:
    from kontext.http.worker_app import create_worker_app

    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    client = await aiohttp_client(create_worker_app(runtime))
    health = await client.get("/health")
    assert health.status == 200 and "workers" in await health.json()
    metrics = await client.get("/metrics")
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    assert "kontext_" in await metrics.text()
    missing = await client.get("/edit")
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"  # it takes no jobs over HTTP


@pytest.mark.parametrize("module, flags, words", [
    ("kontext.main", ["--port", "0"], "MINER_SERVER_PORT: Input should be greater than or equal to 1"),
    ("kontext.worker_main", ["--health-port", "70000"], "WORKER_HEALTH_PORT: Input should be less than or equal"),
])
def test_an_invalid_setting_is_one_line_and_exit_2(module: str, flags: list[str], words: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, "--env-file", "/dev/null", *flags], capture_output=True,
                          text=True, timeout=120, env={"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert f"cannot start: invalid settings: {words}" in done.stderr and "Traceback" not in done.stderr
