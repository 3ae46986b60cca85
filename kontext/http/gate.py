"""Who is calling, and with what priority: the one auth step every door's job routes go through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from aiohttp import web


@dataclass(frozen=True)
class Caller:
    """An admitted caller: its hotkey when the request was signed, and its job priority (stake)."""

    hotkey: Optional[str] = None
    priority: float = 0.0


class Gate(Protocol):
    """Admits a request or raises ``Unauthorized`` (401) / ``Forbidden`` (403).

    ``body`` is the raw bytes as received, whatever the method: the validator signs the body
    ``{}`` of its ``GET /capacity``, so a signature is always checked over what actually arrived.
    """

    async def admit(self, request: web.Request, body: bytes) -> Caller: ...


class OpenGate:
    """No signature needed (the local sidecar): every caller is admitted with priority 0."""

    async def admit(self, request: web.Request, body: bytes) -> Caller:
        return Caller()
