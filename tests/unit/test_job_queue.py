"""Job queue: priority order, FIFO within a priority, idempotent put, positions."""

import asyncio

from kontext.jobs.queue import JobQueue


async def test_priority_then_fifo() -> None:
    queue = JobQueue()
    for job_id, priority in (("a", 0), ("b", 5), ("c", 0), ("d", 5)):
        await queue.put(job_id, priority)
    assert [await queue.get() for _ in range(4)] == ["b", "d", "a", "c"]


async def test_put_is_idempotent_and_positions_count() -> None:
    queue = JobQueue()
    assert await queue.put("a")
    assert await queue.put("b")
    assert not await queue.put("a")
    assert len(queue) == 2 and queue.position("a") == 1 and queue.position("b") == 2
    await queue.put("vip", 10)
    assert queue.position("vip") == 1 and queue.position("b") == 3
    assert queue.position("zzz") is None


async def test_get_waits_for_put() -> None:
    queue = JobQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    await queue.put("late")
    assert await asyncio.wait_for(getter, 1) == "late"
    assert "late" not in queue
