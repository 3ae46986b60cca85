"""Waiting in tests for a condition, with a deadline that fails loudly: never a fixed sleep standing in for
an event, nor a short loop that falls through and fails later with a misleading message."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Type

DEFAULT_TIMEOUT = 30.0
"""Generous: a loaded 2-core machine can stall for seconds; a condition that holds returns at once."""


async def until(check: Callable[[], Awaitable[object]], timeout: float = DEFAULT_TIMEOUT,
                what: str = "the condition") -> None:
    """Return as soon as ``await check()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout:g} s"
        await asyncio.sleep(0.02)


def poll(check: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "the condition", *,
         every: float = 0.02, tolerate: tuple[Type[BaseException], ...] = ()) -> Any:
    """The blocking tests' ``until``: ``check()``'s first true value, as soon as it comes; fail naming ``what`` after
    ``timeout`` seconds. ``tolerate``: exceptions that count as not yet (a server still starting refuses
    connections), where any other fails the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except tolerate:
            pass
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout:g} s"
        time.sleep(every)


def jobs_finished(runtime: Any, *job_ids: str) -> Callable[[], Awaitable[bool]]:
    """For ``until``: every one of the jobs has finished (completed or failed)."""
    async def check() -> bool:
        return all([(await runtime.service.status(job_id)).status.finished for job_id in job_ids])

    return check


def workers_running(runtime: Any, count: int) -> Callable[[], Awaitable[bool]]:
    """For ``until``: ``count`` of the runtime's workers are running a job (taken, not merely queued)."""
    async def check() -> bool:
        return runtime.workers is not None and runtime.workers.running() == count

    return check
