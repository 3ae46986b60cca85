"""The HTTP layer against a hostile client on loopback, through the runner every listener uses: bodies that cannot be
decoded, clients that go away or never finish, and more large bodies at once than the decoding bound allows."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import pytest
from aiohttp import web

from kontext.errors import Unauthorized
from kontext.http.app import create_app
from kontext.http.body import BODY_RULES, UNCOUNTED_BODY_BYTES
from kontext.http.gate import Caller
from kontext.http.serve import make_runner
from kontext.runtime import Runtime
from kontext.settings import Settings
from neurons.synapses import routes as synapse_routes
from tests.fakes import FakeEngine
from tests.unit.test_sidecar import IMAGE_B64, make_settings
from tests.waiting import until

BODY = json.dumps({"prompt": "p", "seed": 1, "image_b64": IMAGE_B64, "num_inference_steps": 1}).encode()


class SignedOnly:
    """The public door's gate as an unsigned caller meets it: every request is refused, after its body is read."""

    async def admit(self, request: web.Request, body: bytes) -> Caller:
        raise Unauthorized("request is not signed")


@contextlib.asynccontextmanager
async def listening(settings: Settings, *, gate: Any = None) -> AsyncIterator[tuple[int, Runtime, web.Application]]:
    """A door on a free loopback port, served by ``make_runner`` (what ``serve`` runs), with the synapse routes."""
    runtime = Runtime(settings, engine=FakeEngine())
    await runtime.start()
    app = create_app(runtime, gate=gate, extra_routes=synapse_routes)
    runner = make_runner(app, settings)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1], runtime, app
        await until(lambda: _all_closed(runner), what="the server saw every client close")  # else a connection
        # still lingering after an error answer (aiohttp reads what is left of its body) holds the cleanup 5 s
    finally:
        await runner.cleanup()
        await runtime.stop()


async def _all_closed(runner: web.AppRunner) -> bool:
    return runner.server is None or all(connection.transport is None for connection in runner.server.connections)


def head(method: str, path: str, length: Optional[int], *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: miner.test", "Content-Type: application/json", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response, by its Content-Length (not to EOF: after an error aiohttp may read what is left of the body)."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status_line, *header_lines = raw.decode("latin-1").strip().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in header_lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 30)
    return int(status_line.split()[1]), headers, body


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


def rejected(runtime: Runtime) -> dict[str, float]:
    prefix = "kontext_requests_rejected_total{code=\""
    return {line[len(prefix):].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in runtime.metrics.render().decode().splitlines() if line.startswith(prefix)}


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog`` at INFO, holding only this test's records: an earlier test's event loop may leave a task that the
    garbage collector destroys (asyncio logs it as an error) at any later moment, here included; collect it first."""
    gc.collect()
    caplog.clear()
    caplog.set_level(logging.INFO)
    return caplog


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


ROUTES = [("POST", "/edit"), ("POST", "/sync/edit"), ("GET", "/capacity"), ("POST", "/EditSynapse")]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_cannot_be_decoded_is_400_on_every_route_unsigned_callers_included(
        settings: Settings, encoding: str, quiet_log: pytest.LogCaptureFixture) -> None:
    """It was a 500 internal_error (the body is read before the signature), with a traceback in the log."""
    caplog = quiet_log
    async with listening(settings, gate=SignedOnly()) as (port, runtime, _):
        for method, path in ROUTES:
            status, headers, body = await exchange(port, head(method, path, len(BODY), f"Content-Encoding: {encoding}")
                                                   + BODY)
            error = json.loads(body)
            assert (status, error["error"]) == (400, "bad_request"), (path, error)
            assert f"cannot be read: Can not decode content-encoding: {encoding}" in error["message"]
            assert headers["connection"] == "close"
        compressed = gzip.compress(BODY)  # what is decodable goes on to the gate: unsigned, 401
        status, _, _ = await exchange(port, head("POST", "/edit", len(compressed), "Content-Encoding: gzip")
                                      + compressed)
        assert status == 401
        assert rejected(runtime) == {"bad_request": len(ROUTES), "unauthorized": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


@pytest.mark.parametrize("how", ["closed", "reset", "half-closed"])
@pytest.mark.parametrize("chunked", [False, True])
async def test_a_client_gone_mid_body_is_a_quiet_close(settings: Settings, quiet_log: pytest.LogCaptureFixture,
                                                       how: str, chunked: bool) -> None:
    """It was logged as an unhandled error with a traceback and counted as internal_error."""
    caplog = quiet_log
    async with listening(settings, gate=SignedOnly()) as (port, runtime, _):
        for method, path in ROUTES:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if chunked:
                writer.write(head(method, path, None, "Transfer-Encoding: chunked") + b"400\r\n" + BODY[:100])
            else:
                writer.write(head(method, path, len(BODY)) + BODY[: len(BODY) // 2])
            await writer.drain()
            if how == "half-closed":
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), 30) == b""  # the server closed: nothing to answer
            elif how == "reset":
                writer.transport.abort()
            writer.close()
            await until(lambda: _has(caplog, f"{method} {path}"), what=f"{path}: the handler saw the client go")
            assert _said(caplog, f"{method} {path} from 127.0.0.1: the client went away")
        assert "internal_error" not in rejected(runtime)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


def _said(caplog: pytest.LogCaptureFixture, words: str) -> bool:
    return any(words in record.getMessage() for record in caplog.records if record.name.startswith("kontext"))


async def _has(caplog: pytest.LogCaptureFixture, words: str) -> bool:
    return _said(caplog, words)


async def test_headers_that_never_finish_close_the_connection(tmp_path: Path) -> None:
    """Without a bound a connection that never sends its headers (or anything) stayed open for ever."""
    async with listening(make_settings(tmp_path, http_idle_timeout_seconds=0.3)) as (port, _, _):
        silent = await asyncio.open_connection("127.0.0.1", port)
        half = await asyncio.open_connection("127.0.0.1", port)
        half[1].write(b"POST /edit HTTP/1.1\r\nHost: miner.test\r\nContent-Le")
        for reader, writer in (silent, half):
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the server, no answer
            writer.close()
        kept = await asyncio.open_connection("127.0.0.1", port)  # a keep-alive connection idle after its answer
        kept[1].write(b"GET /health HTTP/1.1\r\nHost: miner.test\r\n\r\n")
        status, _, _ = await read_response(kept[0])
        assert status == 200 and await asyncio.wait_for(kept[0].read(), 30) == b""
        kept[1].close()


async def test_a_body_that_never_finishes_is_408(tmp_path: Path) -> None:
    async with listening(make_settings(tmp_path, http_body_timeout_seconds=0.3)) as (port, runtime, app):
        for method, path in ROUTES:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head(method, path, len(BODY)) + BODY[:100])
            status, headers, body = await read_response(reader)
            assert (status, json.loads(body)["error"]) == (408, "request_timeout")
            assert "did not arrive within 0.3 s" in json.loads(body)["message"] and headers["connection"] == "close"
            writer.close()
        assert rejected(runtime) == {"request_timeout": len(ROUTES)}
        assert app[BODY_RULES].budget.in_use == 0


async def test_bodies_past_the_decoding_bound_are_503_before_they_are_read(tmp_path: Path) -> None:
    """16 concurrent 28 MB bodies were decoded at once (+712 MB). Each body counts at its Content-Length (the limit
    when chunked or compressed) until its handler ends; past MAX_DECODING_BYTES: 503 + Retry-After, nothing read.
    Small bodies (the validator's image_url edits, its signed {}) are not counted: they are served meanwhile."""
    settings = make_settings(tmp_path, max_request_bytes=2_000_000, max_decoding_bytes=1_500_000)
    async with listening(settings) as (port, runtime, app):
        budget = app[BODY_RULES].budget
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a large body, still arriving
        held = _padded(1_300_000)
        writer.write(head("POST", "/edit", len(held)) + held[:1000])
        await until(lambda: _equals(budget.in_use, len(held)), what="the first body is counted")
        for extra in ([], ["Transfer-Encoding: chunked"], ["Content-Encoding: gzip"]):
            length = None if extra and "chunked" in extra[0] else 300_000
            status, headers, body = await exchange(port, head("POST", "/edit", length, *extra))
            error = json.loads(body)
            assert (status, error["error"], headers["retry-after"]) == (503, "decoding_busy", "2"), error
            assert "MAX_DECODING_BYTES" in error["message"]
        small = _padded(UNCOUNTED_BODY_BYTES)
        for method, path, data in (("GET", "/capacity", b"{}"), ("POST", "/edit", small)):
            status, _, _ = await exchange(port, head(method, path, len(data)) + data)
            assert status == 200
        writer.write(held[1000:])
        status, _, _ = await read_response(reader)
        assert status == 200  # the held request completes
        writer.close()
        await until(lambda: _equals(budget.in_use, 0), what="every body released")
        status, _, _ = await exchange(port, head("POST", "/edit", len(held)) + held)
        assert status == 200
    alone = make_settings(tmp_path / "alone", max_request_bytes=2_000_000, max_decoding_bytes=1024)
    async with listening(alone) as (port, _, _):  # one body is always let through, whatever the bound
        status, _, _ = await exchange(port, head("POST", "/edit", len(held)) + held)
        assert status == 200


def _padded(size: int) -> bytes:
    """A valid edit request of exactly ``size`` bytes."""
    return BODY[:-1] + b"," + b" " * (size - len(BODY) - 7) + b'"x": 1}'


async def _equals(value: int, wanted: int) -> bool:
    return value == wanted


async def test_a_declared_length_over_the_limit_is_413_at_once(settings: Settings) -> None:
    async with listening(settings) as (port, _, app):
        status, headers, body = await exchange(port, head("POST", "/edit", 50_000_000))  # no byte of it sent
        assert (status, json.loads(body)["error"], headers["connection"]) == (413, "payload_too_large", "close")
        assert app[BODY_RULES].budget.in_use == 0
