"""The run queue in Redis Streams with a consumer group, for workers on many hosts.

Workers take entries with XREADGROUP and hold them until the job is done (XACK); while they hold
one, they renew its lease (XCLAIM ... JUSTID resets its idle time). An entry idle longer than the
lease belongs to a worker that stopped: the next worker to ask takes it over with XAUTOCLAIM, and
the job runs again, at most MAX_ATTEMPTS times in all (``JobRecord.cut_off_too_often``). Renewing,
closing and deferring (close, then queue again: one script) check, in the same script, that this
consumer still owns the entry: a worker whose lease lapsed (a long outage) never takes it back, nor
closes or queues again the job of the worker that took over.
Needs Redis 6.2 or newer (XAUTOCLAIM).

Priority: one stream per stake band (``kontext.jobs.queue.BAND_FLOORS``); workers read the highest band
first, FIFO within a band. A job id is queued at most once (the ``queued`` set, checked and filled in the
script that queues it). A deferred entry waits in a zset scored by its due time (Redis's own clock, so hosts
whose clocks disagree agree on it), its entry in a hash; whoever calls ``get`` moves the due ones into their
streams (one script), and blocks no longer than until the next is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import replace
from typing import Any, Optional

from redis import exceptions as redis_errors

from kontext.errors import StartupError
from kontext.jobs.queue import BAND_FLOORS, QueuedJob, band
from kontext.jobs.queue_scripts import CLOSE, DEFER, PROMOTE, PUT, RENEW
from kontext.redis_client import guarded

log = logging.getLogger(__name__)

PREFIX = "kontext:"
GROUP = "workers"
BLOCK_MS = 1000
"""The longest one blocking read waits; between reads, entries of stopped workers are taken over and deferred
entries that came due are moved into their streams."""
PROMOTE_AT_ONCE = 100
"""Deferred entries one ``get`` moves into their streams at most (the next get moves the rest)."""

MIN_REDIS = (6, 2)
"""XAUTOCLAIM came with Redis 6.2."""


class RedisJobQueue:
    """Implements ``RunQueue``. ``consumer`` names this process in the group (workers only; doors just put)."""

    shared = True

    def __init__(self, redis: Any, *, consumer: str, lease_seconds: float) -> None:
        self.redis = redis
        self.consumer = consumer
        self.lease_seconds = lease_seconds
        self.streams = [f"{PREFIX}queue:{index}" for index in range(len(BAND_FLOORS))]
        self.queued_key = f"{PREFIX}queued"
        """Every job id waiting, ready or deferred (put's dedupe, and ``size``)."""
        self.deferred_key = f"{PREFIX}deferred"
        """Deferred job ids, scored by due time (ms, Redis's clock)."""
        self.deferred_entries_key = f"{PREFIX}deferred:entries"
        """Each deferred job's entry: "band priority steps arrival"."""
        self.arrivals_key = f"{PREFIX}arrivals"
        """The arrival counter: run order within a band, deferred entries included."""
        self._put = redis.register_script(PUT)
        self._renew = redis.register_script(RENEW)
        self._close = redis.register_script(CLOSE)
        self._defer = redis.register_script(DEFER)
        self._promote = redis.register_script(PROMOTE)
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

    def _enqueue_keys(self, priority: float) -> list[str]:
        return [self.queued_key, self.streams[band(priority)], self.deferred_key, self.deferred_entries_key,
                self.arrivals_key]

    @staticmethod
    def _enqueue_args(job_id: str, priority: float, steps: int, delay: float) -> list[Any]:
        return [job_id, repr(float(priority)), int(steps), max(0, math.ceil(delay * 1000)), band(priority)]

    @guarded
    async def put(self, job_id: str, priority: float = 0.0, *, steps: int = 1, delay: float = 0.0) -> bool:
        added = await self._put(keys=self._enqueue_keys(priority),
                                args=self._enqueue_args(job_id, priority, steps, delay))
        return bool(added)

    @guarded
    async def get(self) -> QueuedJob:
        while True:
            if self._extra:
                return self._extra.pop(0)
            try:
                next_due_ms = await self._promote(
                    keys=[self.deferred_key, self.deferred_entries_key, self.arrivals_key, *self.streams],
                    args=[PROMOTE_AT_ONCE])
                block_ms = BLOCK_MS if next_due_ms < 0 else max(1, min(BLOCK_MS, int(next_due_ms)))
                entry = await self._next(block=False) or await self._next(block=True, block_ms=block_ms)
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

    async def _next(self, *, block: bool, block_ms: int = BLOCK_MS) -> Optional[QueuedJob]:
        if block:  # 3. whatever comes first while waiting (a deferred entry's due time ends the wait)
            read = await self.redis.xreadgroup(GROUP, self.consumer, {s: ">" for s in reversed(self.streams)},
                                               count=1, block=block_ms)
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
    async def defer(self, entry: QueuedJob, delay: float) -> bool:
        """Close the entry and queue its job again (not before ``delay`` s), in one script: a worker that dies
        between the two steps leaves neither a second entry nor none. An entry another worker took over
        meanwhile is that one's (nothing is queued: the job would run twice); a retry after a lost reply finds
        the entry gone, and queues nothing again."""
        stream, entry_id = entry.receipt
        self._held.pop(entry_id, None)
        outcome = await self._defer(keys=[stream, *self._enqueue_keys(entry.priority)],
                                    args=[GROUP, self.consumer, entry_id,
                                          *self._enqueue_args(entry.job_id, entry.priority, entry.steps, delay)])
        if not outcome:
            log.warning("job %s: its entry is no longer this worker's (taken over by another, or closed by an "
                        "earlier try whose reply was lost); nothing queued again", entry.job_id)
        return outcome == 2

    async def requeue(self, entry: QueuedJob) -> bool:
        return await self.defer(entry, 0.0)

    @guarded
    async def lead(self, task: str, seconds: float) -> bool:
        """True for one process at a time per ``task`` and ``seconds`` (a door's periodic check)."""
        return bool(await self.redis.set(f"{PREFIX}lead:{task}", self.consumer, nx=True, px=int(seconds * 1000)))

    @guarded
    async def job_ids(self) -> set[str]:
        """Every job with an open entry: waiting, deferred, or held by a worker (``done`` deletes what it closes)."""
        ids: set[str] = set()
        for stream in self.streams:
            ids.update(fields[b"job"].decode() for _, fields in await self.redis.xrange(stream))
        ids.update(raw.decode() for raw in await self.redis.hkeys(self.deferred_entries_key))
        return ids

    @guarded
    async def size(self) -> int:
        return int(await self.redis.scard(self.queued_key))

    @guarded
    async def position(self, job_id: str) -> Optional[int]:
        waiting = await self._waiting()
        return next((index + 1 for index, entry in enumerate(waiting) if entry.job_id == job_id), None)

    @guarded
    async def ahead_of(self, priority: float) -> list[int]:
        return [entry.steps for entry in await self._waiting() if -entry.key[0] >= band(priority)]

    async def _waiting(self) -> list[QueuedJob]:
        """Every entry waiting, ready (in a stream, past its group's last delivered id) or deferred, in run
        order; read in one MULTI/EXEC, so a consistent view. Linear in the backlog (MAX_QUEUE bounds it)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for stream in self.streams:
                pipe.xinfo_groups(stream)
                pipe.xrange(stream)
            pipe.hgetall(self.deferred_entries_key)
            replies = await pipe.execute(raise_on_error=False)  # a stream gone (Redis lost it): none waits there
        waiting = []
        for index, (groups, items) in enumerate(zip(replies[:-1:2], replies[1:-1:2])):
            if isinstance(groups, Exception) or isinstance(items, Exception):
                continue
            last = _stream_id(next((_field(group, "last-delivered-id") for group in groups
                                    if _field(group, "name") == GROUP), "0-0"))
            waiting += [_entry(index, fields) for entry_id, fields in items if _stream_id(entry_id) > last]
        for job_id, raw in ({} if isinstance(replies[-1], Exception) else replies[-1]).items():
            band_index, priority, steps, arrival = raw.decode().split()
            waiting.append(QueuedJob((-int(band_index), int(arrival)), job_id.decode(), float(priority),
                                     steps=int(steps)))
        return sorted(waiting)  # stable: entries of the first release (no arrival) keep their stream order

    async def _take(self, read: Any) -> list[QueuedJob]:
        entries = []
        for stream, items in read:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in items:
                entries.append(await self._hold(name, entry_id, fields, redelivered=False))
        return sorted(entries)

    async def _hold(self, stream: str, entry_id: Any, fields: Any, *, redelivered: bool) -> QueuedJob:
        """Hold (and renew) a delivered entry; its job is no longer waiting, whichever way it came (a read cut
        off before this line leaves the id waiting until the takeover gets here)."""
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        entry = replace(_entry(self.streams.index(stream), fields), receipt=(stream, entry_id),
                        redelivered=redelivered)
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


def _entry(band_index: int, fields: dict[bytes, bytes]) -> QueuedJob:
    """A stream entry as a ``QueuedJob`` (one written by the first release has no steps nor arrival)."""
    priority = float(fields[b"priority"])
    return QueuedJob((-band_index, int(fields.get(b"arrival", 0))), fields[b"job"].decode(), priority,
                     steps=int(fields.get(b"steps", 1)))


def _field(mapping: dict[Any, Any], name: str) -> Any:
    value = mapping.get(name, mapping.get(name.encode()))
    return value.decode() if isinstance(value, bytes) else value


def _stream_id(entry_id: Any) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)
