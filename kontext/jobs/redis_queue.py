"""The run queue in Redis Streams with a consumer group, for workers on many hosts.

Workers take entries with XREADGROUP and hold them until the job is done (XACK); while they hold
one, they renew its lease (XCLAIM ... JUSTID resets its idle time). An entry idle longer than the
lease belongs to a worker that stopped: the next worker to ask takes it over with XAUTOCLAIM, and
the job runs again, at most MAX_ATTEMPTS times in all (``JobRecord.cut_off_too_often``).

Priority: one stream per stake band (``BAND_FLOORS``); workers read the highest band first, FIFO
within a band. A job id is queued at most once (a set checked and filled with the XADD, atomically).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Optional

from redis import exceptions as redis_errors

from kontext.jobs.queue import QueuedJob
from kontext.redis_client import guarded

log = logging.getLogger(__name__)

PREFIX = "kontext:"
GROUP = "workers"
BAND_FLOORS = (0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0)
"""Priority (the caller's stake) at or above each floor falls in that band; higher bands run first."""
BLOCK_MS = 1000
"""How long one blocking read waits; between reads, entries of stopped workers are taken over."""

_PUT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'job', ARGV[1], 'priority', ARGV[2])
return 1
"""


def band(priority: float) -> int:
    return max((index for index, floor in enumerate(BAND_FLOORS) if priority >= floor), default=0)


class RedisJobQueue:
    """Implements ``RunQueue``. ``consumer`` names this process in the group (workers only; doors just put)."""

    shared = True

    def __init__(self, redis: Any, *, consumer: str, lease_seconds: float) -> None:
        self.redis = redis
        self.consumer = consumer
        self.lease_seconds = lease_seconds
        self.streams = [f"{PREFIX}queue:{index}" for index in range(len(BAND_FLOORS))]
        self.queued_key = f"{PREFIX}queued"
        self._put = redis.register_script(_PUT)
        self._held: dict[str, QueuedJob] = {}
        self._extra: list[QueuedJob] = []
        self._renewer: Optional[asyncio.Task[None]] = None

    @guarded
    async def open(self) -> None:
        for stream in self.streams:
            with contextlib.suppress(redis_errors.ResponseError):  # BUSYGROUP: it exists already
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)

    def start_renewing(self) -> None:
        """Workers: keep the lease of every held entry fresh, every third of the lease."""
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever(), name="lease-renewer")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    @guarded
    async def put(self, job_id: str, priority: float = 0.0) -> bool:
        added = await self._put(keys=[self.queued_key, self.streams[band(priority)]], args=[job_id, priority])
        return bool(added)

    @guarded
    async def get(self) -> QueuedJob:
        while True:
            if self._extra:
                return self._extra.pop(0)
            for stream in reversed(self.streams):  # 1. take over what stopped workers held
                _, claimed, _ = await self.redis.xautoclaim(stream, GROUP, self.consumer,
                                                            min_idle_time=int(self.lease_seconds * 1000),
                                                            start_id="0-0", count=1)
                if claimed:
                    entry = await self._hold(stream, *claimed[0], redelivered=True)
                    log.warning("took over job %s from a worker whose lease ran out", entry.job_id)
                    return entry
            for stream in reversed(self.streams):  # 2. new work, highest band first
                read = await self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=1)
                if read:
                    return (await self._take(read))[0]
            read = await self.redis.xreadgroup(GROUP, self.consumer, {s: ">" for s in reversed(self.streams)},
                                               count=1, block=BLOCK_MS)
            if read:  # 3. whatever came first while waiting
                entries = await self._take(read)
                self._extra.extend(entries[1:])
                return entries[0]

    @guarded
    async def done(self, entry: QueuedJob) -> None:
        stream, entry_id = entry.receipt
        self._held.pop(entry_id, None)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            await pipe.execute()

    @guarded
    async def size(self) -> int:
        return int(await self.redis.scard(self.queued_key))

    @guarded
    async def position(self, job_id: str) -> Optional[int]:
        if not await self.redis.sismember(self.queued_key, job_id):
            return None
        ahead = 0
        for stream in reversed(self.streams):
            for _, fields in await self._undelivered(stream):
                if fields[b"job"].decode() == job_id:
                    return ahead + 1
                ahead += 1
        return None

    @guarded
    async def ahead_of(self, priority: float) -> int:
        """Entries not yet delivered in this band and above: each stream's length less what its group holds
        (``done`` deletes what it acknowledges), in one round trip, whatever the backlog."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.streams[band(priority):]:
                pipe.xlen(stream)
                pipe.xpending(stream, GROUP)
            replies = await pipe.execute()
        return sum(length - held["pending"] for length, held in zip(replies[::2], replies[1::2]))

    async def _undelivered(self, stream: str) -> list[Any]:
        groups = await self.redis.xinfo_groups(stream)
        last = next((g[b"last-delivered-id"] if b"last-delivered-id" in g else g["last-delivered-id"]
                     for g in groups if (g.get(b"name") or g.get("name")) in (GROUP, GROUP.encode())), b"0-0")
        last = last.decode() if isinstance(last, bytes) else last
        return list(await self.redis.xrange(stream, min=f"({last}", max="+"))

    async def _take(self, read: Any) -> list[QueuedJob]:
        entries = []
        for stream, items in read:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in items:
                entries.append(await self._hold(name, entry_id, fields, redelivered=False))
        return sorted(entries, key=lambda entry: -entry.priority)

    async def _hold(self, stream: str, entry_id: Any, fields: Any, *, redelivered: bool) -> QueuedJob:
        """Hold (and renew) a delivered entry; its job is no longer waiting, whichever way it came (a read cut
        off before this line leaves the id waiting until the takeover gets here)."""
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        priority = float(fields[b"priority"])
        entry = QueuedJob((-priority, 0), fields[b"job"].decode(), priority, (stream, entry_id), redelivered)
        self._held[entry_id] = entry
        await self.redis.srem(self.queued_key, entry.job_id)
        return entry

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            for entry_id, entry in list(self._held.items()):
                try:
                    await self.redis.xclaim(entry.receipt[0], GROUP, self.consumer, 0, [entry_id], justid=True)
                except Exception as exc:  # noqa: BLE001 - Redis away: the lease may lapse, the job runs again
                    log.warning("could not renew the lease of %s: %s", entry.job_id, exc)
                    break
