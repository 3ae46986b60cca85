"""The run queue in Redis Streams with a consumer group, for workers on many hosts.

Workers take entries with XREADGROUP and hold them until the job is done (XACK); while they hold
one, they renew its lease (XCLAIM ... JUSTID resets its idle time). An entry idle longer than the
lease belongs to a worker that stopped: the next worker to ask takes it over with XAUTOCLAIM, and
the job runs again, at most MAX_ATTEMPTS times in all (``JobRecord.cut_off_too_often``). Renewing,
closing and requeueing (close, then queue again: one script) check, in the same script, that this
consumer still owns the entry: a worker whose lease lapsed (a long outage) never takes it back, nor
closes or queues again the job of the worker that took over.
Needs Redis 6.2 or newer (XAUTOCLAIM).

Priority: one stream per stake band (``BAND_FLOORS``); workers read the highest band first, FIFO
within a band. A job id is queued at most once (a set checked and filled with the XADD, atomically).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Optional

from redis import exceptions as redis_errors

from kontext.errors import StartupError
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
_OWNED = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
"""
_RENEW = _OWNED + """
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""
_CLOSE_OWNED = _OWNED + """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
"""
_CLOSE = _CLOSE_OWNED + """
return 1
"""
_REQUEUE = _CLOSE_OWNED + """
if redis.call('SADD', KEYS[2], ARGV[4]) == 0 then return 1 end
redis.call('XADD', KEYS[3], '*', 'job', ARGV[4], 'priority', ARGV[5])
return 2
"""
MIN_REDIS = (6, 2)
"""XAUTOCLAIM came with Redis 6.2."""


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
        self._renew = redis.register_script(_RENEW)
        self._close = redis.register_script(_CLOSE)
        self._requeue = redis.register_script(_REQUEUE)
        self._held: dict[str, QueuedJob] = {}
        self._extra: list[QueuedJob] = []
        self._claim_from = {stream: "0-0" for stream in self.streams}
        """Where each stream's next XAUTOCLAIM scan starts: Redis scans a bounded slice of the pending list per
        call, so an orphan behind many held entries is reached by following the cursor."""
        self._renewer: Optional[asyncio.Task[None]] = None

    @guarded
    async def open(self) -> None:
        info = await self.redis.info("server")
        version = tuple(int(part) for part in str(info.get("redis_version", "0.0")).split(".")[:2])
        if version < MIN_REDIS:
            raise StartupError(f"Redis {info.get('redis_version')} is too old: the queue needs Redis "
                               f"{'.'.join(map(str, MIN_REDIS))} or newer (XAUTOCLAIM)")
        await self._create_groups()

    async def _create_groups(self) -> None:
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
            try:
                entry = await self._next(block=False) or await self._next(block=True)
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The streams or the group are gone (Redis restarted without its AOF, or was flushed): make
                # them again and go on; the jobs' records, if they survived, are queued again by the doors.
                log.error("the queue's consumer group is missing (%s); creating it again", exc)
                await self._create_groups()
                continue
            if entry is not None:
                return entry

    async def _next(self, *, block: bool) -> Optional[QueuedJob]:
        if block:  # 3. whatever comes first while waiting
            read = await self.redis.xreadgroup(GROUP, self.consumer, {s: ">" for s in reversed(self.streams)},
                                               count=1, block=BLOCK_MS)
            if not read:
                return None
            entries = await self._take(read)
            self._extra.extend(entries[1:])
            return entries[0]
        for stream in reversed(self.streams):  # 1. take over what stopped workers held
            reply = await self.redis.xautoclaim(stream, GROUP, self.consumer,
                                                min_idle_time=int(self.lease_seconds * 1000),
                                                start_id=self._claim_from[stream], count=1)
            cursor, claimed = reply[0], reply[1]  # Redis 7 adds a third item (deleted ids)
            self._claim_from[stream] = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            if claimed:
                entry = await self._hold(stream, *claimed[0], redelivered=True)
                log.warning("took over job %s from a worker whose lease ran out", entry.job_id)
                return entry
        for stream in reversed(self.streams):  # 2. new work, highest band first
            read = await self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=1)
            if read:
                return (await self._take(read))[0]
        return None

    @guarded
    async def done(self, entry: QueuedJob) -> None:
        """Close the entry, unless another worker has taken it over meanwhile (then it is that one's)."""
        stream, entry_id = entry.receipt
        self._held.pop(entry_id, None)
        if not await self._close(keys=[stream], args=[GROUP, self.consumer, entry_id]):
            log.warning("job %s: its entry was taken over by another worker; left to that one", entry.job_id)

    @guarded
    async def requeue(self, entry: QueuedJob) -> bool:
        """Close the entry and queue its job again, in one script: a worker that dies between the two steps
        leaves neither a second entry nor none. An entry another worker took over meanwhile is that one's
        (nothing is queued: the job would run twice); a retry after a lost reply finds the entry gone, and
        queues nothing again."""
        stream, entry_id = entry.receipt
        self._held.pop(entry_id, None)
        outcome = await self._requeue(keys=[stream, self.queued_key, self.streams[band(entry.priority)]],
                                      args=[GROUP, self.consumer, entry_id, entry.job_id, entry.priority])
        if not outcome:
            log.warning("job %s: its entry is no longer this worker's (taken over by another, or closed by an "
                        "earlier try whose reply was lost); nothing queued again", entry.job_id)
        return outcome == 2

    @guarded
    async def lead(self, task: str, seconds: float) -> bool:
        """True for one process at a time per ``task`` and ``seconds`` (a door's periodic check)."""
        return bool(await self.redis.set(f"{PREFIX}lead:{task}", self.consumer, nx=True, px=int(seconds * 1000)))

    @guarded
    async def job_ids(self) -> set[str]:
        """Every job with an open entry, waiting or held by a worker (``done`` deletes what it closes)."""
        ids: set[str] = set()
        for stream in self.streams:
            ids.update(fields[b"job"].decode() for _, fields in await self.redis.xrange(stream))
        return ids

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
                    owned = await self._renew(keys=[entry.receipt[0]], args=[GROUP, self.consumer, entry_id])
                except Exception as exc:  # noqa: BLE001 - Redis away: the lease may lapse, the job runs again
                    log.warning("could not renew the lease of %s: %s", entry.job_id, exc)
                    break
                if not owned:  # taken over while this process could not renew: it belongs to the other now
                    self._held.pop(entry_id, None)
                    log.warning("lost the lease of job %s to another worker", entry.job_id)
