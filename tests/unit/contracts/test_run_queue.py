"""The ``RunQueue`` contract, run on both backends (in memory; Redis Streams on a real redis-server, one per
module): stake bands, FIFO within a band, one entry per job, positions, the work ahead, deferred entries (not
delivered before their time, then delivered; counted while they wait), defer and requeue as one step that
queues nothing twice, and ``StorageUnavailable`` when Redis is away."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from kontext.errors import StorageUnavailable
from kontext.jobs.queue import BAND_FLOORS, JobQueue, QueuedJob, RunQueue, band
from tests.unit.contracts.backends import fresh_redis_client, unreachable_redis

DELAY = 0.2
"""A deferral short enough to keep the suite fast, long enough to tell "not yet" from "now"."""
SLACK = 0.01
"""Redis's clock counts whole milliseconds."""


@pytest.fixture(params=["memory", "redis"])
async def queue(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    if request.param == "memory":
        yield JobQueue()
        return
    from kontext.jobs.redis_queue import RedisJobQueue

    client = await fresh_redis_client(request)
    backend = RedisJobQueue(client, consumer="c", lease_seconds=30)
    await backend.open()
    yield backend
    await backend.close()
    await client.aclose()


async def _get(queue: RunQueue, timeout: float = 10.0) -> QueuedJob:
    return await asyncio.wait_for(queue.get(), timeout)


def test_bands() -> None:
    assert [band(p) for p in (-5, 0, 0.5, 1, 50, 5000, 10**9)] == [0, 0, 0, 1, 2, 4, len(BAND_FLOORS) - 1]


# -- order, one entry per job, positions ---------------------------------------------------------------------


async def test_higher_band_first_fifo_within_a_band(queue: RunQueue) -> None:
    """The in-memory queue ordered by exact priority (7 before 5), Redis by band (5, then 7): admission and run
    order differed by backend."""
    for job_id, priority in (("low-1", 0), ("five", 5), ("low-2", 0.5), ("seven", 7), ("rich", 5000)):
        assert await queue.put(job_id, priority, steps=int(priority) + 1)
    assert [await queue.position(j) for j in ("rich", "five", "seven", "low-1", "low-2")] == [1, 2, 3, 4, 5]
    taken = [await _get(queue) for _ in range(5)]
    assert [entry.job_id for entry in taken] == ["rich", "five", "seven", "low-1", "low-2"]
    assert [(entry.priority, entry.steps) for entry in taken] == [(5000, 5001), (5, 6), (7, 8), (0, 1), (0.5, 1)]
    assert await queue.size() == 0 and await queue.position("five") is None


async def test_put_is_idempotent_and_positions_count(queue: RunQueue) -> None:
    assert await queue.put("a")
    assert await queue.put("b")
    assert not await queue.put("a")  # queued already
    assert await queue.size() == 2 and await queue.position("a") == 1 and await queue.position("b") == 2
    await queue.put("vip", 10)
    assert await queue.position("vip") == 1 and await queue.position("b") == 3
    assert await queue.position("zzz") is None
    entry = await _get(queue)
    assert entry.job_id == "vip" and not await queue.put("a") and await queue.size() == 2
    await queue.done(entry)
    assert await queue.put("vip", 10)  # taken and done: it may be queued again (a retry)


async def test_get_waits_for_put(queue: RunQueue) -> None:
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put("late")
    assert (await asyncio.wait_for(getter, 10)).job_id == "late"
    assert await queue.size() == 0


async def test_ahead_of_gives_the_steps_of_each_waiting_entry_of_the_band_and_above(queue: RunQueue) -> None:
    """What a new job of that priority would wait for: its band and the higher ones, not what workers hold."""
    for job_id, priority, steps in (("a", 0, 2), ("b", 5, 3), ("c", 50, 4), ("d", 1, 5)):
        await queue.put(job_id, priority, steps=steps)
    assert await queue.ahead_of(9) == [4, 3, 5]  # b and d share a band with 9: both run first, whatever their stake
    assert await queue.ahead_of(0) == [4, 3, 5, 2] and await queue.ahead_of(10**6) == []
    held = await _get(queue)
    assert held.job_id == "c" and await queue.ahead_of(0) == [3, 5, 2]  # a taken (held) entry waits no more


# -- defer and requeue ------------------------------------------------------------------------------------------


async def test_a_requeue_queues_the_job_again_at_its_priority_once(queue: RunQueue) -> None:
    await queue.put("a", 30, steps=7)
    await queue.put("b", 1)
    entry = await _get(queue)
    assert entry.job_id == "a" and await queue.size() == 1
    assert await queue.requeue(entry)
    assert await queue.position("a") == 1 and await queue.size() == 2  # its own band: ahead of b again
    assert not await queue.requeue(entry)  # a second try (a reply lost): the entry is closed, nothing more queued
    assert await queue.size() == 2
    again = await _get(queue)
    assert (again.job_id, again.priority, again.steps) == ("a", 30, 7) and again.receipt != entry.receipt


async def test_an_entry_closed_already_is_not_queued_again(queue: RunQueue) -> None:
    await queue.put("a")
    entry = await _get(queue)
    await queue.done(entry)
    assert not await queue.defer(entry, 0.0) and not await queue.requeue(entry)
    assert await queue.size() == 0


async def test_a_defer_of_a_job_queued_meanwhile_closes_the_entry_and_queues_nothing(queue: RunQueue) -> None:
    await queue.put("a")
    entry = await _get(queue)
    assert await queue.put("a")  # queued again by someone else (a door's orphan check)
    assert not await queue.defer(entry, DELAY)
    assert await queue.size() == 1 and not await queue.defer(entry, DELAY)
    assert (await _get(queue)).job_id == "a"


async def test_a_deferred_entry_is_not_delivered_before_its_time_then_is(queue: RunQueue) -> None:
    await queue.put("chained", 0, steps=4)
    entry = await _get(queue)
    started = time.monotonic()
    assert await queue.defer(entry, DELAY)
    await queue.put("later", 0)  # came after it, yet ready first
    assert (await _get(queue)).job_id == "later"
    again = await _get(queue)
    assert again.job_id == "chained" and time.monotonic() - started >= DELAY - SLACK
    assert (again.priority, again.steps) == (0, 4) and await queue.size() == 0


async def test_a_deferred_put_is_delivered_after_its_delay_with_nothing_else_queued(queue: RunQueue) -> None:
    """The getter waits for the due time itself: no put wakes it."""
    started = time.monotonic()
    assert await queue.put("reference-wait", 3, delay=DELAY)
    entry = await _get(queue)
    assert entry.job_id == "reference-wait" and time.monotonic() - started >= DELAY - SLACK


async def test_deferred_entries_are_queued_jobs(queue: RunQueue) -> None:
    """Counted by size, given a position (in run order, as if not deferred) and in ahead_of: jobs parked
    behind their reference bypassed MAX_QUEUE and the admission estimate."""
    await queue.put("first", 0, steps=2, delay=30)
    await queue.put("second", 0, steps=3)
    await queue.put("rich", 500, steps=4, delay=30)
    assert not await queue.put("first", 0)  # one entry per job, deferred or not
    assert await queue.size() == 3
    assert [await queue.position(j) for j in ("rich", "first", "second")] == [1, 2, 3]
    assert await queue.ahead_of(0) == [4, 2, 3] and await queue.ahead_of(100) == [4]
    assert (await _get(queue)).job_id == "second"  # the only one ready
    assert await queue.size() == 2 and await queue.ahead_of(0) == [4, 2]


async def test_a_deferred_entry_joins_the_back_of_its_band_when_due(queue: RunQueue) -> None:
    await queue.put("deferred", 0, delay=DELAY)
    await queue.put("waiting", 0)
    await asyncio.sleep(DELAY)  # due now, not yet moved: the next get moves it, behind what is ready
    assert [(await _get(queue)).job_id for _ in range(2)] == ["waiting", "deferred"]


# -- failure ----------------------------------------------------------------------------------------------------


async def test_an_unreachable_redis_is_storage_unavailable() -> None:
    """(The in-memory queue has no storage to fail.)"""
    from kontext.jobs.redis_queue import RedisJobQueue

    client = unreachable_redis()
    queue: Any = RedisJobQueue(client, consumer="c", lease_seconds=1)
    entry = QueuedJob((0, 0), "x", 0.0, receipt=(queue.streams[0], "1-0"))
    try:
        for call in (lambda: queue.put("x"), lambda: queue.put("x", delay=1.0), queue.get, queue.size,
                     lambda: queue.position("x"), lambda: queue.ahead_of(0), lambda: queue.done(entry),
                     lambda: queue.defer(entry, 1.0), lambda: queue.requeue(entry)):
            with pytest.raises(StorageUnavailable, match="unreachable"):
                await call()
    finally:
        await client.aclose()
