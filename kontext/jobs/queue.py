"""The run order of ready jobs: ``asyncio.PriorityQueue`` plus what it lacks (one entry per job, positions)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol


@dataclass(frozen=True, order=True)
class QueuedJob:
    """One queue entry: highest priority first, FIFO within a priority (``order`` compares the key only)."""

    key: tuple[float, int]
    job_id: str = field(compare=False)
    priority: float = field(compare=False)
    receipt: Any = field(default=None, compare=False)
    """What a shared queue needs to close the entry (its stream and entry id)."""
    redelivered: bool = field(default=False, compare=False)
    """Taken over from a worker that stopped renewing its lease (a shared queue's recovery)."""


class RunQueue(Protocol):
    """What the service and the workers use of the queue; ``JobQueue`` (one host) and ``RedisJobQueue``."""

    shared: bool
    """Whether workers of other processes take from it too: then no process may fail its jobs for its own
    lack of an engine."""

    async def open(self) -> None: ...
    def start_renewing(self) -> None: ...
    async def close(self) -> None: ...
    async def put(self, job_id: str, priority: float = 0.0) -> bool: ...
    async def get(self) -> QueuedJob: ...
    async def done(self, entry: QueuedJob) -> None: ...
    async def requeue(self, entry: QueuedJob) -> bool: ...
    async def size(self) -> int: ...
    async def position(self, job_id: str) -> Optional[int]: ...
    async def ahead_of(self, priority: float) -> int: ...


class JobQueue:
    """In-memory queue for one host. Persistence lives in the store; this is rebuilt from it at start.

    A job id is queued at most once (``put`` is idempotent), so a restart's re-enqueue and a late
    duplicate cannot run a job twice. ``done`` closes an entry a worker took (nothing to do in
    memory; a shared queue releases its lease there).
    """

    shared = False

    def __init__(self) -> None:
        self._queue: asyncio.PriorityQueue[QueuedJob] = asyncio.PriorityQueue()
        self._members: dict[str, QueuedJob] = {}
        self._seq = itertools.count()

    async def open(self) -> None:
        """Nothing to open: the queue lives in this process (a shared queue connects here)."""

    def start_renewing(self) -> None:
        """Nothing to renew: no other process can take an entry over (a shared queue's leases)."""

    async def close(self) -> None:
        """Nothing to close."""

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._members

    async def put(self, job_id: str, priority: float = 0.0) -> bool:
        """Queue ``job_id``; False if it is queued already."""
        if job_id in self._members:
            return False
        entry = QueuedJob((-priority, next(self._seq)), job_id, priority)
        self._members[job_id] = entry
        self._queue.put_nowait(entry)
        return True

    async def get(self) -> QueuedJob:
        entry = await self._queue.get()
        self._members.pop(entry.job_id, None)
        return entry

    async def done(self, entry: QueuedJob) -> None:
        """The worker is finished with ``entry`` (ran it, failed it, or handed it on)."""

    async def requeue(self, entry: QueuedJob) -> bool:
        """Queue the entry's job again, at its own priority, and close the entry (one step on a shared queue,
        where a crash between the two would leave two entries); False if it is queued already."""
        queued = await self.put(entry.job_id, entry.priority)
        await self.done(entry)
        return queued

    async def size(self) -> int:
        return len(self._members)

    async def position(self, job_id: str) -> Optional[int]:
        """1-based place in the run order, or None if not queued."""
        entry = self._members.get(job_id)
        if entry is None:
            return None
        return 1 + sum(1 for other in self._members.values() if other.key < entry.key)

    async def ahead_of(self, priority: float) -> int:
        """How many queued jobs would run before a new job of ``priority`` (higher or equal first)."""
        return sum(1 for entry in self._members.values() if entry.priority >= priority)
