"""What every door's handlers share: the typed app keys, and the two request helpers (the service, the gate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from aiohttp import web

from kontext.http.body import read_body
from kontext.http.gate import Caller, Gate
from kontext.jobs.service import EditService
from kontext.runtime import Runtime


@dataclass(frozen=True)
class Door:
    """What a door says about itself on ``GET /``, ``GET /check/{hotkey}`` and ``GET /health``."""

    name: str = "sidecar"
    hotkey: Optional[str] = None
    """The miner's hotkey (the neuron knows it; the chain-less sidecar has none)."""
    health_extra: Optional[Callable[[], dict]] = None
    """Extra ``/health`` fields (the neuron adds its metagraph view)."""


RUNTIME = web.AppKey("runtime", Runtime)
GATE: web.AppKey[Gate] = web.AppKey("gate")
DOOR = web.AppKey("door", Door)


def service_of(request: web.Request) -> EditService:
    return request.app[RUNTIME].service


async def admit(request: web.Request) -> tuple[Caller, bytes]:
    """Read the raw body (``read_body``: bounded in size, time and bytes in flight) and pass it through the door's
    gate (signature, blacklist, priority)."""
    body = await read_body(request)
    return await request.app[GATE].admit(request, body), body
