"""In-memory priority queue of job ids: highest priority first, FIFO within a priority."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class JobQueue:
    """The worker's run order. Persistence lives in the store; this is rebuilt from it at start.

    A job id is queued at most once (idempotent put), so a restart's re-enqueue and a late
    duplicate cannot run a job twice.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._members: set[str] = set()
        self._counter = itertools.count()
        self._ready = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._members

    async def put(self, job_id: str, priority: float = 0.0) -> bool:
        """Queue ``job_id``; returns False if it was already queued."""
        if job_id in self._members:
            return False
        heapq.heappush(self._heap, (-priority, next(self._counter), job_id))
        self._members.add(job_id)
        async with self._ready:
            self._ready.notify()
        return True

    async def get(self) -> str:
        async with self._ready:
            await self._ready.wait_for(lambda: bool(self._heap))
            _, _, job_id = heapq.heappop(self._heap)
        self._members.discard(job_id)
        return job_id

    def ahead_of(self, priority: float) -> int:
        """How many queued jobs would run before a new job of ``priority`` (higher or equal first)."""
        return sum(1 for entry in self._heap if -entry[0] >= priority)

    def position(self, job_id: str) -> int | None:
        """1-based place in the run order, or None if not queued."""
        if job_id not in self._members:
            return None
        key = next(entry for entry in self._heap if entry[2] == job_id)
        return 1 + sum(1 for entry in self._heap if entry < key)
