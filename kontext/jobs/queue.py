"""The run queue: the ``RunQueue`` interface, its stake bands, and ``JobQueue``, the in-memory one for one host."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Protocol

BAND_FLOORS = (0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0)
"""Priority (the caller's stake) at or above each floor falls in that band; higher bands run first, FIFO within a
band (so a stake one unit higher does not jump the queue, a stake ten times higher does)."""


def band(priority: float) -> int:
    return max((index for index, floor in enumerate(BAND_FLOORS) if priority >= floor), default=0)


@dataclass(frozen=True, order=True)
class QueuedJob:
    """One queue entry. Entries sort in run order by ``key``, (-band, arrival): highest band first, then first
    come (``order`` compares the key only)."""

    key: tuple[int, int]
    job_id: str = field(compare=False)
    priority: float = field(compare=False)
    receipt: Any = field(default=None, compare=False)
    """What the queue needs to close the entry a worker holds (a shared queue: its stream and entry id)."""
    redelivered: bool = field(default=False, compare=False)
    """Taken over from a worker that stopped renewing its lease (a shared queue's recovery)."""
    steps: int = field(default=1, compare=False)
    """The job's num_inference_steps: its work, for the admission estimate of what waits ahead."""


class RunQueue(Protocol):
    """What the service and the workers use of the queue; ``JobQueue`` (one host) and ``RedisJobQueue``.

    A job id is queued at most once. An entry put with a delay (deferred) is a queued job like any other (it is
    counted by ``size``, has a ``position``, and is in ``ahead_of``) that ``get`` does not deliver before its
    time; when that comes it joins the back of its band.
    """

    shared: bool
    """Whether workers of other processes take from it too: then no process may fail its jobs for its own
    lack of an engine."""

    async def open(self) -> None: ...
    def start_renewing(self) -> None: ...
    async def close(self) -> None: ...
    async def put(self, job_id: str, priority: float = 0.0, *, steps: int = 1, delay: float = 0.0) -> bool:
        """Queue ``job_id`` (not delivered before ``delay`` seconds); False if it is queued already."""
        ...
    async def get(self) -> QueuedJob:
        """The next entry in run order, held by the caller until ``done``, ``defer`` or ``requeue``."""
        ...
    async def done(self, entry: QueuedJob) -> None: ...
    async def defer(self, entry: QueuedJob, delay: float) -> bool:
        """Close the held ``entry`` and queue its job again, not before ``delay`` seconds, in one step; False
        (nothing queued) if the job is queued already or the entry is no longer the caller's."""
        ...
    async def requeue(self, entry: QueuedJob) -> bool:
        """``defer(entry, 0)``."""
        ...
    async def size(self) -> int: ...
    async def position(self, job_id: str) -> Optional[int]:
        """1-based place in the run order (a deferred entry: as if it were not), or None if not queued."""
        ...
    async def ahead_of(self, priority: float) -> list[int]:
        """The ``steps`` of each waiting entry (ready or deferred, not held) that would run before a new job of
        ``priority`` (its band or a higher one), in run order."""
        ...


class JobQueue:
    """In-memory queue for one host. Persistence lives in the store; this is rebuilt from it at start.

    A deferred entry has no task or timer of its own: ``get`` waits for whichever comes first, a ready entry or
    the earliest due time (the loop's clock). ``done`` closes an entry a worker took; an entry closed already
    (by ``done``, ``defer`` or ``requeue``) is not queued again by a late ``defer``.
    """

    shared = False

    def __init__(self) -> None:
        self._members: dict[str, QueuedJob] = {}
        """Every waiting entry by job id, ready or deferred."""
        self._ready: list[QueuedJob] = []
        """A heap in run order."""
        self._deferred: list[tuple[float, int, str]] = []
        """A heap of (due time, arrival, job id)."""
        self._held: set[int] = set()
        self._arrivals = itertools.count()
        self._receipts = itertools.count()
        self._changed = asyncio.Event()

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

    async def put(self, job_id: str, priority: float = 0.0, *, steps: int = 1, delay: float = 0.0) -> bool:
        if job_id in self._members:
            return False
        entry = QueuedJob((-band(priority), next(self._arrivals)), job_id, priority, steps=steps)
        self._members[job_id] = entry
        if delay > 0:
            heapq.heappush(self._deferred, (asyncio.get_running_loop().time() + delay, entry.key[1], job_id))
        else:
            heapq.heappush(self._ready, entry)
        self._changed.set()  # a waiting get() looks again (a new ready entry, or an earlier due time)
        return True

    async def get(self) -> QueuedJob:
        loop = asyncio.get_running_loop()
        while True:
            self._promote(loop.time())
            if self._ready:
                entry = heapq.heappop(self._ready)
                del self._members[entry.job_id]
                receipt = next(self._receipts)
                self._held.add(receipt)
                return replace(entry, receipt=receipt)
            self._changed.clear()
            timeout = self._deferred[0][0] - loop.time() if self._deferred else None
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _promote(self, now: float) -> None:
        """Deferred entries whose time has come join the back of their band (as a shared queue's do)."""
        while self._deferred and self._deferred[0][0] <= now:
            _, _, job_id = heapq.heappop(self._deferred)
            entry = self._members[job_id]
            ready = replace(entry, key=(entry.key[0], next(self._arrivals)))
            self._members[job_id] = ready
            heapq.heappush(self._ready, ready)

    async def done(self, entry: QueuedJob) -> None:
        """The worker is finished with ``entry`` (ran it, failed it, or handed it on)."""
        self._held.discard(entry.receipt)

    async def defer(self, entry: QueuedJob, delay: float) -> bool:
        if entry.receipt not in self._held:  # closed already (a second try): nothing is queued twice
            return False
        self._held.discard(entry.receipt)
        return await self.put(entry.job_id, entry.priority, steps=entry.steps, delay=delay)

    async def requeue(self, entry: QueuedJob) -> bool:
        return await self.defer(entry, 0.0)

    async def size(self) -> int:
        return len(self._members)

    async def position(self, job_id: str) -> Optional[int]:
        entry = self._members.get(job_id)
        if entry is None:
            return None
        return 1 + sum(1 for other in self._members.values() if other.key < entry.key)

    async def ahead_of(self, priority: float) -> list[int]:
        return [entry.steps for entry in sorted(self._members.values()) if -entry.key[0] >= band(priority)]
