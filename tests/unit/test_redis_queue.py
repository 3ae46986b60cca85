"""What only the Redis run queue has, on a real redis-server (one per module; the contract both queues share is
``tests/unit/contracts``): leases renewed while held and taken over when they lapse, cancellation that always
ends a wait, and deferred entries stored and moved by the scripts."""

from __future__ import annotations

import asyncio
from typing import Any

from kontext.jobs.redis_queue import RedisJobQueue


async def _queue(fresh_redis: Any, consumer: str, lease: float = 30.0) -> RedisJobQueue:
    queue = RedisJobQueue(fresh_redis, consumer=consumer, lease_seconds=lease)
    await queue.open()
    return queue


LEASE = 1.5
"""Short, yet long enough that a loaded machine's stall of the event loop (a renewal is due every LEASE / 3)
does not let a renewed entry lapse."""


async def test_a_lapsed_lease_is_taken_over_and_a_renewed_one_is_not(fresh_redis: Any) -> None:
    dying = await _queue(fresh_redis, "dying", lease=LEASE)
    living = await _queue(fresh_redis, "living", lease=LEASE)
    other = await _queue(fresh_redis, "other", lease=LEASE)
    await living.put("kept", 0)
    await dying.put("orphan", 0)
    kept = await living.get()  # first: once the orphan's lease has lapsed, so has kept's unless it was renewed
    orphan = await dying.get()  # taken, then never renewed: its worker "died"
    living.start_renewing()
    try:
        taken = await asyncio.wait_for(other.get(), 5)  # (a takeover scans the older entry, kept, first)
        assert taken.job_id == "orphan" and taken.redelivered and orphan.job_id == "orphan"
        await other.put("fresh", 0)
        nxt = await asyncio.wait_for(other.get(), 5)
        assert nxt.job_id == "fresh" and not nxt.redelivered  # "kept" was renewed: nobody took it over
        await living.done(kept)
    finally:
        await living.close()


async def test_a_cancelled_get_always_ends(fresh_redis: Any) -> None:
    """redis-py can swallow a cancellation that lands mid-read (redis/redis-py#2028); a worker cancelled
    while waiting for work must still stop, or a shutdown hangs."""
    queue = await _queue(fresh_redis, "c")
    for attempt in range(150):
        task = asyncio.create_task(queue.get())
        await asyncio.sleep((attempt % 15) * 0.0007)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=3)
        assert done, f"attempt {attempt}: the cancelled get() kept running"
        assert task.cancelled()


async def test_a_cancelled_loop_of_commands_and_pipelines_always_ends(fresh_redis: Any) -> None:
    """The heartbeat's shape: a loop of commands and transactions that only a cancellation ends."""
    async def forever() -> None:
        while True:
            await fresh_redis.hset("k", mapping={"a": "1"})
            async with fresh_redis.pipeline(transaction=True) as pipe:
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


async def test_a_read_cut_off_before_its_entry_was_held_still_leaves_the_waiting_set(fresh_redis: Any) -> None:
    """A worker killed between XREADGROUP and holding the entry: the takeover clears the job's waiting mark,
    so the queue's size is right and the job can be queued again later (a retry's put is not a no-op)."""
    from kontext.jobs.redis_queue import GROUP

    dying = await _queue(fresh_redis, "dying", lease=0.3)
    other = await _queue(fresh_redis, "other", lease=0.3)
    await dying.put("cut-off", 0)
    await fresh_redis.xreadgroup(GROUP, "dying", {dying.streams[0]: ">"}, count=1)  # delivered, then the process died
    await asyncio.sleep(0.5)
    taken = await asyncio.wait_for(other.get(), 5)
    assert taken.job_id == "cut-off" and taken.redelivered
    assert await other.size() == 0
    await other.done(taken)
    assert await other.put("cut-off", 0)  # queued again: not mistaken for one still waiting


async def _pending(fresh_redis: Any, queue: RedisJobQueue) -> int:
    from kontext.jobs.redis_queue import GROUP

    return sum([(await fresh_redis.xpending(stream, GROUP))["pending"] for stream in queue.streams])


async def test_a_requeue_closes_the_entry_and_queues_the_job_once_in_one_step(fresh_redis: Any) -> None:
    """Put, then done, as two calls: a worker dying between them left the job queued and its old entry held,
    and after the lease both ran it. One script does both; its retry (a reply lost) queues nothing more."""
    queue = await _queue(fresh_redis, "a")
    await queue.put("job", 50)
    entry = await queue.get()
    assert await queue.size() == 0 and await _pending(fresh_redis, queue) == 1
    assert await queue.requeue(entry)
    assert await queue.size() == 1 and await _pending(fresh_redis, queue) == 0
    assert not await queue.requeue(entry)  # again: the entry is gone, nothing is queued twice
    assert await queue.size() == 1 and await _pending(fresh_redis, queue) == 0
    again = await queue.get()
    assert again.job_id == "job" and again.priority == 50 and again.receipt != entry.receipt
    await queue.done(again)


async def test_a_requeue_of_an_entry_taken_over_queues_nothing(fresh_redis: Any) -> None:
    """The old put-then-done queued the job again while the worker that took the entry over ran it: twice."""
    slow = await _queue(fresh_redis, "slow", lease=0.5)
    fast = await _queue(fresh_redis, "fast", lease=0.5)
    await slow.put("job", 0)
    lapsed = await slow.get()  # then its worker stalls past the lease
    await asyncio.sleep(0.6)
    taken = await asyncio.wait_for(fast.get(), 5)
    assert taken.job_id == "job" and taken.redelivered
    assert not await slow.requeue(lapsed)
    assert await slow.size() == 0 and await _pending(fresh_redis, slow) == 1  # still fast's, and queued nowhere else
    await fast.done(taken)
    assert await _pending(fresh_redis, fast) == 0


async def test_a_deferred_entry_is_due_by_redis_clock_not_the_hosts(fresh_redis: Any, monkeypatch) -> None:
    """Hosts whose clocks disagree agree on when a deferred entry is due: the script stamps it with Redis's
    TIME, whatever this host's clock says."""
    import time

    skewed = time.time() + 3600.0
    monkeypatch.setattr(time, "time", lambda: skewed)  # this host's clock, an hour ahead
    queue = await _queue(fresh_redis, "c")
    await queue.put("deferred", 0, delay=30.0)
    seconds, microseconds = await fresh_redis.time()
    due_in_ms = await fresh_redis.zscore(queue.deferred_key, "deferred") - (seconds * 1000 + microseconds // 1000)
    assert 29_000 <= due_in_ms <= 30_000
    await queue.put("ready", 0)
    assert (await asyncio.wait_for(queue.get(), 5)).job_id == "ready"


async def test_deferred_jobs_have_an_open_entry_for_the_orphan_check(fresh_redis: Any) -> None:
    """A door queues again every unfinished job without an open entry: a deferred one has one."""
    queue = await _queue(fresh_redis, "c")
    await queue.put("deferred", 0, delay=30.0)
    await queue.put("ready", 0)
    held = await queue.get()
    await queue.put("waiting", 0)
    assert await queue.job_ids() == {"deferred", "ready", "waiting"} and held.job_id == "ready"


async def test_entries_queued_by_the_previous_release_are_still_read(fresh_redis: Any) -> None:
    """An upgrade with jobs waiting: their stream entries have no steps nor arrival."""
    queue = await _queue(fresh_redis, "c")
    await fresh_redis.xadd(queue.streams[0], {"job": "old", "priority": "0.0"})
    await fresh_redis.sadd(queue.queued_key, "old")
    await queue.put("new", 0, steps=4)
    assert await queue.position("old") == 1 and await queue.ahead_of(0) == [1, 4]
    entry = await asyncio.wait_for(queue.get(), 5)
    assert (entry.job_id, entry.steps) == ("old", 1)
