"""The Redis run queue on a real redis-server: stake bands, one entry per job, positions, leases renewed
while held and taken over when they lapse."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kontext.errors import StorageUnavailable
from kontext.http.errors import answer
from kontext.jobs.redis_queue import BAND_FLOORS, RedisJobQueue, band
from kontext.redis_client import connect


async def _queue(redis_client: Any, consumer: str, lease: float = 30.0) -> RedisJobQueue:
    queue = RedisJobQueue(redis_client, consumer=consumer, lease_seconds=lease)
    await queue.open()
    return queue


def test_bands() -> None:
    assert [band(p) for p in (-5, 0, 0.5, 1, 50, 5000, 10**9)] == [0, 0, 0, 1, 2, 4, len(BAND_FLOORS) - 1]


async def test_higher_stake_first_fifo_within_a_band_and_one_entry_per_job(redis_client: Any) -> None:
    queue = await _queue(redis_client, "a")
    for job_id, priority in (("low-1", 0), ("rich", 5000), ("low-2", 0.5), ("mid", 20)):
        assert await queue.put(job_id, priority)
    assert not await queue.put("low-1", 0)  # queued already
    assert await queue.size() == 4
    assert [await queue.position(j) for j in ("rich", "mid", "low-1", "low-2")] == [1, 2, 3, 4]
    assert await queue.ahead_of(20) == 2 and await queue.ahead_of(0) == 4 and await queue.ahead_of(10**6) == 0
    taken = [await queue.get()]
    assert await queue.ahead_of(0) == 3 and await queue.ahead_of(5000) == 0  # a taken (held) entry waits no more
    taken += [await queue.get() for _ in range(3)]
    assert [entry.job_id for entry in taken] == ["rich", "mid", "low-1", "low-2"]
    assert await queue.size() == 0 and await queue.position("mid") is None
    for entry in taken:
        await queue.done(entry)
    assert await queue.put("low-1", 0)  # taken and done: it may be queued again (a retry)


LEASE = 1.5
"""Short, yet long enough that a loaded machine's stall of the event loop (a renewal is due every LEASE / 3)
does not let a renewed entry lapse."""


async def test_a_lapsed_lease_is_taken_over_and_a_renewed_one_is_not(redis_client: Any) -> None:
    dying = await _queue(redis_client, "dying", lease=LEASE)
    living = await _queue(redis_client, "living", lease=LEASE)
    other = await _queue(redis_client, "other", lease=LEASE)
    await dying.put("orphan", 0)
    await living.put("kept", 0)
    orphan = await dying.get()  # taken, then never renewed: its worker "died"
    kept = await living.get()
    living.start_renewing()
    try:
        await asyncio.sleep(2 * LEASE)
        taken = await asyncio.wait_for(other.get(), 5)
        assert taken.job_id == "orphan" and taken.redelivered and orphan.job_id == "orphan"
        await other.put("fresh", 0)
        nxt = await asyncio.wait_for(other.get(), 5)
        assert nxt.job_id == "fresh" and not nxt.redelivered  # "kept" was renewed: nobody took it over
        await living.done(kept)
    finally:
        await living.close()


async def test_an_unreachable_redis_is_a_503_not_a_crash() -> None:
    from tools.redis_server import free_port

    unreachable = connect(f"redis://127.0.0.1:{free_port()}/0")
    queue = RedisJobQueue(unreachable, consumer="c", lease_seconds=1)
    with pytest.raises(StorageUnavailable) as info:
        await queue.put("x", 0)
    assert answer(info.value)[0] == 503 and "unreachable" in info.value.message
    await unreachable.aclose()


async def test_a_cancelled_get_always_ends(redis_client: Any) -> None:
    """redis-py can swallow a cancellation that lands mid-read (redis/redis-py#2028); a worker cancelled
    while waiting for work must still stop, or a shutdown hangs."""
    queue = await _queue(redis_client, "c")
    for attempt in range(150):
        task = asyncio.create_task(queue.get())
        await asyncio.sleep((attempt % 15) * 0.0007)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=3)
        assert done, f"attempt {attempt}: the cancelled get() kept running"
        assert task.cancelled()


async def test_a_cancelled_loop_of_commands_and_pipelines_always_ends(redis_client: Any) -> None:
    """The heartbeat's shape: a loop of commands and transactions that only a cancellation ends."""
    async def forever() -> None:
        while True:
            await redis_client.hset("k", mapping={"a": "1"})
            async with redis_client.pipeline(transaction=True) as pipe:
                pipe.hget("k", "a")
                pipe.scard("s")
                await pipe.execute()

    for attempt in range(100):
        task = asyncio.create_task(forever())
        for _ in range(attempt % 9):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=3)
        assert done, f"attempt {attempt}: the cancelled loop kept running"


async def test_a_read_cut_off_before_its_entry_was_held_still_leaves_the_waiting_set(redis_client: Any) -> None:
    """A worker killed between XREADGROUP and holding the entry: the takeover clears the job's waiting mark,
    so the queue's size is right and the job can be queued again later (a retry's put is not a no-op)."""
    from kontext.jobs.redis_queue import GROUP

    dying = await _queue(redis_client, "dying", lease=0.3)
    other = await _queue(redis_client, "other", lease=0.3)
    await dying.put("cut-off", 0)
    await redis_client.xreadgroup(GROUP, "dying", {dying.streams[0]: ">"}, count=1)  # delivered, then the process died
    await asyncio.sleep(0.5)
    taken = await asyncio.wait_for(other.get(), 5)
    assert taken.job_id == "cut-off" and taken.redelivered
    assert await other.size() == 0
    await other.done(taken)
    assert await other.put("cut-off", 0)  # queued again: not mistaken for one still waiting


async def _pending(redis_client: Any, queue: RedisJobQueue) -> int:
    from kontext.jobs.redis_queue import GROUP

    return sum([(await redis_client.xpending(stream, GROUP))["pending"] for stream in queue.streams])


async def test_a_requeue_closes_the_entry_and_queues_the_job_once_in_one_step(redis_client: Any) -> None:
    """Put, then done, as two calls: a worker dying between them left the job queued and its old entry held,
    and after the lease both ran it. One script does both; its retry (a reply lost) queues nothing more."""
    queue = await _queue(redis_client, "a")
    await queue.put("job", 50)
    entry = await queue.get()
    assert await queue.size() == 0 and await _pending(redis_client, queue) == 1
    assert await queue.requeue(entry)
    assert await queue.size() == 1 and await _pending(redis_client, queue) == 0
    assert not await queue.requeue(entry)  # again: the entry is gone, nothing is queued twice
    assert await queue.size() == 1 and await _pending(redis_client, queue) == 0
    again = await queue.get()
    assert again.job_id == "job" and again.priority == 50 and again.receipt != entry.receipt
    await queue.done(again)


async def test_a_requeue_of_an_entry_taken_over_queues_nothing(redis_client: Any) -> None:
    """The old put-then-done queued the job again while the worker that took the entry over ran it: twice."""
    slow = await _queue(redis_client, "slow", lease=0.5)
    fast = await _queue(redis_client, "fast", lease=0.5)
    await slow.put("job", 0)
    lapsed = await slow.get()  # then its worker stalls past the lease
    await asyncio.sleep(1.0)
    taken = await asyncio.wait_for(fast.get(), 5)
    assert taken.job_id == "job" and taken.redelivered
    assert not await slow.requeue(lapsed)
    assert await slow.size() == 0 and await _pending(redis_client, slow) == 1  # still fast's, and queued nowhere else
    await fast.done(taken)
    assert await _pending(redis_client, fast) == 0
