"""Outbound HTTP against real loopback servers: the address guard, signed callbacks, image downloads."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from aiohttp import web

from kontext.delivery.callbacks import CallbackSender, verify_signature
from kontext.delivery.fetch import ImageFetchError, fetch_image
from kontext.delivery.guard import make_guarded_session
from protocol import CallbackPayload, CallbackStatus, JobStatus
from tests.fakes import TableResolver

PNG = b"\x89PNG\r\n\x1a\n" + b"fake-png-bytes" * 10
PAYLOAD = CallbackPayload(job_id="edit-1", status=JobStatus.COMPLETED,
                          completed_at=datetime(2025, 10, 22, 11, 45, tzinfo=timezone.utc),
                          image_url="http://miner/images/edits/edit-1.png")


@pytest.fixture
async def receiver(aiohttp_server):
    seen: list[tuple[web.Request, bytes, dict]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        form = {}
        # re-parse from the raw bytes the signature covers
        from tests.e2e.servers import _multipart_from_bytes

        reader = await _multipart_from_bytes(request, body)
        async for part in reader:
            form[part.name] = await part.read(decode=False)
        seen.append((request, body, form))
        code = int(request.query.get("code", "200"))
        if request.query.get("sleep"):
            await asyncio.sleep(float(request.query["sleep"]))
        if code in (301, 302):
            raise web.HTTPFound("http://127.0.0.1:9/elsewhere")
        return web.Response(status=code, text="no thanks" if code >= 400 else "ok")

    async def image(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        if kind == "ok":
            return web.Response(body=PNG, content_type="image/png")
        if kind == "missing":
            return web.Response(status=404)
        if kind == "redirect-metadata":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data")
        if kind == "slow":
            await asyncio.sleep(2)
            return web.Response(body=PNG)
        response = web.StreamResponse()  # "endless": streamed without Content-Length
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x" * 4096)
        return response

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/image/{kind}", image)
    server = await aiohttp_server(app)
    server.seen = seen
    return server


NAMES = {"metadata.test": ["169.254.169.254"], "receiver.test": ["127.0.0.1"]}
METADATA_REFUSED = "refused: metadata.test resolves to 169.254.169.254, which is link-local"
CREDENTIAL_URLS = ["http://alice:hunter2@127.0.0.1/hook", "ftp://alice:hunter2@example.com/",
                   "alice:hunter2@example.com/hook", "http://alice:hunter2@exa\u2100mple.com/hook"]


async def _send(url: str, secret: str | None, *, allow_private: bool = True, timeout: float = 5,
                png: bytes | None = PNG, payload: CallbackPayload = PAYLOAD):
    session = make_guarded_session(allow_private=allow_private, timeout=timeout,
                                   inner_resolver=TableResolver(NAMES))
    try:
        return await CallbackSender(session, timeout=timeout, allow_private=allow_private).deliver(
            url, secret, payload, png)
    finally:
        await session.close()


async def test_delivered_with_fields_image_and_verifiable_signature(receiver) -> None:
    record = await _send(str(receiver.make_url("/hook")), "s3cret")
    assert record.status is CallbackStatus.DELIVERED and record.status_code == 200
    assert record.payload_status is JobStatus.COMPLETED and record.attempted_at is not None
    request, body, form = receiver.seen[0]
    assert request.headers["X-Callback-Secret"] == "s3cret"
    assert verify_signature("s3cret", request.headers["X-Callback-Timestamp"], body,
                            request.headers["X-Callback-Signature"])
    assert not verify_signature("other", request.headers["X-Callback-Timestamp"], body,
                                request.headers["X-Callback-Signature"])
    assert form["job_id"] == b"edit-1" and form["status"] == b"completed"
    assert form["completed_at"] == b"2025-10-22T11:45:00Z" and form["image"] == PNG


async def test_no_secret_no_secret_headers_and_failure_payload(receiver) -> None:
    failed = CallbackPayload(job_id="edit-2", status=JobStatus.FAILED, completed_at=PAYLOAD.completed_at,
                             error="input image: not readable")
    record = await _send(str(receiver.make_url("/hook")), None, png=None, payload=failed)
    assert record.status is CallbackStatus.DELIVERED and record.payload_status is JobStatus.FAILED
    request, _, form = receiver.seen[0]
    assert "X-Callback-Secret" not in request.headers and "X-Callback-Signature" not in request.headers
    assert form["error"] == b"input image: not readable" and "image" not in form


@pytest.mark.parametrize("query, status_code, words", [
    ("?code=500", 500, "HTTP 500: no thanks"),
    ("?code=302", 302, "redirect (not followed)"),
])
async def test_non_2xx_is_failed_with_code(receiver, query: str, status_code: int, words: str) -> None:
    record = await _send(str(receiver.make_url("/hook")) + query, "s3cret")
    assert record.status is CallbackStatus.FAILED and record.status_code == status_code
    assert words in (record.error or "") and len(receiver.seen) == 1  # one attempt, no retry


async def test_timeout_refused_and_blocked_are_failed_without_code(receiver) -> None:
    slow = await _send(str(receiver.make_url("/hook")) + "?sleep=2", "s3cret", timeout=0.3)
    assert slow.status is CallbackStatus.FAILED and slow.error == "timeout after 0.3s"
    from tests.e2e.servers import free_port

    refused = await _send(f"http://127.0.0.1:{free_port()}/hook", "s3cret")
    assert refused.status is CallbackStatus.FAILED and refused.status_code is None and refused.error
    before = len(receiver.seen)
    blocked = await _send(str(receiver.make_url("/hook")), "s3cret", allow_private=False)
    assert blocked.status is CallbackStatus.FAILED and "loopback (allowed only with" in (blocked.error or "")
    assert len(receiver.seen) == before  # nothing reached the receiver
    metadata = await _send("http://169.254.169.254/hook", "s3cret")
    assert metadata.status is CallbackStatus.FAILED and "link-local" in (metadata.error or "")
    for record in (slow, refused, blocked, metadata):
        assert "s3cret" not in str(record.model_dump())


async def test_resolver_refusal_reaches_the_record(receiver) -> None:
    """aiohttp wraps the resolver's refusal in a ClientConnectorDNSError whose text hides it."""
    metadata = await _send("http://metadata.test/hook", "s3cret")
    assert metadata.status is CallbackStatus.FAILED and metadata.status_code is None
    assert metadata.error == METADATA_REFUSED
    private = await _send(f"http://receiver.test:{receiver.port}/hook", "s3cret", allow_private=False)
    assert private.error == ("refused: receiver.test resolves to 127.0.0.1, which is loopback "
                             "(allowed only with OUTBOUND_ALLOW_PRIVATE=true)")
    assert receiver.seen == []
    reached = await _send(f"http://receiver.test:{receiver.port}/hook", "s3cret")
    assert reached.status is CallbackStatus.DELIVERED and len(receiver.seen) == 1


async def test_unusual_spellings_of_loopback_do_not_reach_it(receiver) -> None:
    for host in ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127\u30020\u30020\u30021", "[::ffff:127.0.0.1]"):
        record = await _send(f"http://{host}:{receiver.port}/hook", "s3cret", allow_private=False)
        assert record.status is CallbackStatus.FAILED and record.error is not None
        assert record.error.startswith("refused: ") and "127.0.0.1" in record.error
        assert "which is loopback" in record.error
    assert receiver.seen == []


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
async def test_callback_errors_never_echo_credentials(url: str) -> None:
    record = await _send(url, "s3cret")
    assert record.status is CallbackStatus.FAILED and (record.error or "").startswith("refused: ")
    assert "alice" not in str(record.model_dump()) and "hunter2" not in str(record.model_dump())


async def _fetch(url: str, *, max_bytes: int = 100_000, timeout: float = 5, allow_private: bool = True) -> bytes:
    session = make_guarded_session(allow_private=allow_private, timeout=timeout,
                                   inner_resolver=TableResolver(NAMES))
    try:
        return await fetch_image(session, url, max_bytes=max_bytes, timeout=timeout, allow_private=allow_private)
    finally:
        await session.close()


async def test_fetch_image(receiver) -> None:
    assert await _fetch(str(receiver.make_url("/image/ok"))) == PNG
    for kind, kwargs, words in [
        ("missing", {}, "HTTP 404"),
        ("endless", {"max_bytes": 50_000}, "larger than 50000 bytes"),
        ("redirect-metadata", {}, "refused: 169.254.169.254, which is link-local"),
        ("slow", {"timeout": 0.3}, "timed out"),
        ("ok", {"allow_private": False}, "which is loopback"),
    ]:
        with pytest.raises(ImageFetchError) as info:
            await _fetch(str(receiver.make_url(f"/image/{kind}")), **kwargs)
        assert words in str(info.value) and str(info.value).startswith("image_url")


async def test_fetch_reports_the_resolver_refusal() -> None:
    with pytest.raises(ImageFetchError) as info:
        await _fetch("http://metadata.test/latest/meta-data")
    assert str(info.value) == f"image_url: {METADATA_REFUSED}"


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
async def test_fetch_errors_never_echo_credentials(url: str) -> None:
    with pytest.raises(ImageFetchError) as info:
        await _fetch(url)
    assert str(info.value).startswith("image_url: refused: ")
    assert "alice" not in str(info.value) and "hunter2" not in str(info.value)
