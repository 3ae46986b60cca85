"""Request bodies in: read once, bounded in size, in time, and in how many bytes are in flight at once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import hdrs, web

from kontext.errors import DecodingBusy
from kontext.http.errors import Handler


UNCOUNTED_BODY_BYTES = 256 * 1024
"""Bodies this small (by their Content-Length) are not counted: they cost little to decode, and the validator's own
requests (an ``image_url`` edit, a signed ``{}``) stay served while large uploads fill the budget."""


class BodyBudget:
    """The bytes of the request bodies being read, parsed and decoded at once (MAX_DECODING_BYTES).

    A body over UNCOUNTED_BODY_BYTES is counted from before its first byte is read until its handler ends
    (``/sync/edit``: until its job is submitted), at its ``Content-Length``, or at the size limit when it is chunked
    or compressed (its size is not known before it is read). A body that would pass the bound is refused before it
    is read, so a burst of large bodies cannot take the memory of decoding them all at once; one body is always let
    through.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._held: dict[int, int] = {}  # id(request) -> bytes; a request lives while its handler runs

    def reserve(self, request: web.BaseRequest, size: int) -> None:
        if self.in_use and self.in_use + size > self.limit:
            raise DecodingBusy(f"the miner is reading and decoding {self.in_use} bytes of other requests; a body "
                               f"of {size} bytes would pass its bound of {self.limit} (MAX_DECODING_BYTES); "
                               "retry shortly")
        self._held[id(request)] = self._held.get(id(request), 0) + size
        self.in_use += size

    def release(self, request: web.BaseRequest) -> None:
        self.in_use -= self._held.pop(id(request), 0)


@dataclass(frozen=True)
class BodyRules:
    """What every door's body reads share: the process's budget, and how long a body may take to arrive."""

    budget: BodyBudget
    timeout_seconds: float


BODY_RULES = web.AppKey("body_rules", BodyRules)


async def read_body(request: web.Request) -> bytes:
    """The whole body: 413 over the app's ``client_max_size`` (at once when ``Content-Length`` says so), 408 when it
    has not arrived within the time bound, 503 ``decoding_busy`` past the budget.

    Read here rather than with ``request.read()``, which keeps the bytes on the request for as long as the
    handler runs (a ``/sync/edit`` waits for its job). A body that cannot be decoded (a bad ``Content-Encoding``,
    broken chunks) raises ``web.RequestPayloadError``, and a client that went away ``ConnectionError``: the
    JSON error middleware answers both (``kontext/http/errors.py``).
    """
    rules = request.app[BODY_RULES]
    limit = request.client_max_size
    declared = request.content_length
    if declared is not None and declared > limit:
        raise web.HTTPRequestEntityTooLarge(limit, declared)
    if not request.body_exists:
        return b""
    size = declared if declared is not None and hdrs.CONTENT_ENCODING not in request.headers else limit
    if size > UNCOUNTED_BODY_BYTES:
        rules.budget.reserve(request, size)
    try:
        return await asyncio.wait_for(_read_up_to(request, limit), rules.timeout_seconds)
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the request body did not arrive within {rules.timeout_seconds:g} s") from None


async def _read_up_to(request: web.Request, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(limit, size)
        chunks.append(chunk)
    return b"".join(chunks)


def release_body(request: web.Request) -> None:
    """The body is parsed and decoded: it no longer counts against the budget (``/sync/edit``, before its wait)."""
    request.app[BODY_RULES].budget.release(request)


@web.middleware
async def bounded_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Whatever the handler did, its body stops counting against the budget when it ends."""
    try:
        return await handler(request)
    finally:
        rules = request.app.get(BODY_RULES)
        if rules is not None:
            rules.budget.release(request)
