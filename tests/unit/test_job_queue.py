"""Job queue: priority order, FIFO within a priority, idempotent put, positions."""

import asyncio

from kontext.jobs.queue import JobQueue


async def test_priority_then_fifo() -> None:
    queue = JobQueue()
    for job_id, priority in (("a", 0), ("b", 5), ("c", 0), ("d", 5)):
        await queue.put(job_id, priority)
    entries = [await queue.get() for _ in range(4)]
    assert [entry.job_id for entry in entries] == ["b", "d", "a", "c"]
    assert [entry.priority for entry in entries] == [5, 5, 0, 0]  # each entry keeps its priority (for requeues)


async def test_put_is_idempotent_and_positions_count() -> None:
    queue = JobQueue()
    assert await queue.put("a")
    assert await queue.put("b")
    assert not await queue.put("a")
    assert len(queue) == 2 and await queue.position("a") == 1 and await queue.position("b") == 2
    await queue.put("vip", 10)
    assert await queue.position("vip") == 1 and await queue.position("b") == 3
    assert await queue.position("zzz") is None


async def test_get_waits_for_put() -> None:
    queue = JobQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    await queue.put("late")
    assert (await asyncio.wait_for(getter, 1)).job_id == "late"
    assert "late" not in queue


async def test_ahead_of_counts_higher_and_equal_priorities() -> None:
    queue = JobQueue()
    for job_id, priority in (("a", 0), ("b", 5), ("c", 10)):
        await queue.put(job_id, priority)
    assert (await queue.ahead_of(5), await queue.ahead_of(11), await queue.ahead_of(0)) == (2, 0, 3)


async def test_a_requeue_queues_the_job_again_at_its_priority_once() -> None:
    queue = JobQueue()
    await queue.put("a", 3)
    await queue.put("b", 1)
    entry = await queue.get()
    assert entry.job_id == "a" and len(queue) == 1
    assert await queue.requeue(entry)
    assert await queue.position("a") == 1 and len(queue) == 2  # its own priority: ahead of b again
    assert not await queue.requeue(entry)  # queued already
    assert len(queue) == 2
