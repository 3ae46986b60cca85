"""Writes that must happen eventually: a job handed on to a helper task (a retry, a wait for its reference, a
download) must not be stranded by a short outage of the store or of a shared queue."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_WAIT_SECONDS = 0.5
MAX_WAIT_SECONDS = 10.0


async def keep_trying(operation: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``operation`` until it succeeds (backoff up to MAX_WAIT_SECONDS); only a cancellation (a shutdown)
    stops it, and then the entry stays held: the next start, or a shared queue's lease, brings the job back."""
    wait = FIRST_WAIT_SECONDS
    while True:
        try:
            return await operation()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - said in the log, tried again
            log.warning("%s failed (%s: %s); trying again in %.1fs", what, type(exc).__name__, exc, wait)
        await asyncio.sleep(wait)
        wait = min(wait * 2, MAX_WAIT_SECONDS)
