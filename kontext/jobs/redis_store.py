"""The ``JobStore`` in Redis, for many hosts: one hash per job, a few indexes, one transaction per operation.

Keys (prefix ``kontext:``): ``job:<id>`` (a hash of the SQLite store's columns), ``seq`` (arrival
order), ``unfinished`` (zset by seq), ``status:<status>`` (sets, for the counts), ``finished`` and
``swept`` (zsets by time, for retention), ``callbacks:pending`` (set), ``callbacks:sending`` (zset by
claim time). Writes run in MULTI/EXEC, checked under WATCH: a write to a job whose hash is gone (deleted,
forgotten after its retention) writes nothing. The callback claim is one compare-and-set script.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Optional

from redis.exceptions import WatchError

from kontext.errors import JobConflict
from kontext.jobs.record import JobOutcome, JobRecord, now
from kontext.jobs.rows import COLUMNS, callback_columns, from_row, outcome_columns, started_columns, to_row
from kontext.redis_client import guarded
from protocol import CallbackRecord, CallbackStatus, ImageSource, JobStatus

PREFIX = "kontext:"

_CLAIM = """
if redis.call('HGET', KEYS[1], 'callback_status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'callback_status', ARGV[2], 'callback_attempted_at', ARGV[3])
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


def _key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def _encode(values: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """(fields to set, fields to delete): Redis has no NULL."""
    present = {name: str(value) for name, value in values.items() if value is not None}
    return present, [name for name, value in values.items() if value is None]


class RedisJobStore:
    """Implements ``kontext.jobs.store.JobStore`` over one Redis (with AOF on, an accepted job survives a
    Redis restart)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)

    @guarded
    async def open(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        """The client belongs to the runtime, which closes it."""

    @guarded
    async def insert(self, job: JobRecord) -> None:
        key = _key(job.id)
        row = to_row(job)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    if await pipe.exists(key):
                        await pipe.unwatch()
                        raise JobConflict(f"job_id {job.id!r} already exists",
                                          fields=[{"field": "job_id", "message": "already exists"}])
                    seq = await self.redis.incr(f"{PREFIX}seq")
                    fields, _ = _encode({**row, "seq": seq})
                    pipe.multi()
                    pipe.hset(key, mapping=fields)
                    pipe.zadd(f"{PREFIX}unfinished", {job.id: seq})
                    pipe.sadd(f"{PREFIX}status:{job.status.value}", job.id)
                    await pipe.execute()
                    return
                except WatchError:  # another process wrote this id meanwhile: look again (a conflict, now)
                    continue

    @guarded
    async def get(self, job_id: str) -> Optional[JobRecord]:
        raw = await self.redis.hgetall(_key(job_id))
        return _decode(raw) if raw else None

    @guarded
    async def delete(self, job_id: str) -> None:
        def delete(pipe: Any, status: bytes, callback_status: Optional[bytes]) -> None:
            pipe.delete(_key(job_id))
            pipe.zrem(f"{PREFIX}unfinished", job_id)
            pipe.srem(f"{PREFIX}status:{JobStatus.QUEUED.value}", job_id)

        await self._when(job_id, lambda status: status == JobStatus.QUEUED.value.encode(), delete)

    @guarded
    async def mark_started(self, job_id: str, *, started_at: float, attempts: int, worker: str) -> bool:
        return await self._update(job_id, started_columns(started_at=started_at, attempts=attempts, worker=worker),
                                  moves_to=JobStatus.PROCESSING)

    @guarded
    async def set_image_source(self, job_id: str, source: ImageSource) -> None:
        await self._update(job_id, {"image_source": source.value})

    @guarded
    async def count_store_retry(self, job_id: str) -> None:
        await self._when(job_id, lambda status: True,
                         lambda pipe, *_: pipe.hincrby(_key(job_id), "store_retries", 1))

    @guarded
    async def mark_finished(self, job_id: str, outcome: JobOutcome) -> bool:
        def indexes(pipe: Any, callback_status: Optional[bytes]) -> None:
            pipe.zrem(f"{PREFIX}unfinished", job_id)
            pipe.zadd(f"{PREFIX}finished", {job_id: outcome.finished_at})
            if callback_status == CallbackStatus.PENDING.value.encode():
                pipe.sadd(f"{PREFIX}callbacks:pending", job_id)

        return await self._update(job_id, outcome_columns(outcome), moves_to=outcome.status, also=indexes)

    @guarded
    async def claim_callback(self, job_id: str) -> bool:
        """pending -> sending, atomically across every process: only one of them POSTs."""
        claimed = await self._claim(keys=[_key(job_id), f"{PREFIX}callbacks:pending", f"{PREFIX}callbacks:sending"],
                                    args=[CallbackStatus.PENDING.value, CallbackStatus.SENDING.value, now(), job_id])
        return bool(claimed)

    @guarded
    async def set_callback(self, job_id: str, record: CallbackRecord) -> None:
        await self._set_callback(job_id, record)

    async def _set_callback(self, job_id: str, record: CallbackRecord) -> bool:
        def indexes(pipe: Any, callback_status: Optional[bytes]) -> None:
            pipe.zrem(f"{PREFIX}callbacks:sending", job_id)
            pipe.srem(f"{PREFIX}callbacks:pending", job_id)

        return await self._update(job_id, callback_columns(record), also=indexes)

    @guarded
    async def fail_interrupted_callbacks(self, error: str, attempted_at: float,
                                         claimed_before: Optional[float] = None) -> list[str]:
        """Callbacks claimed before ``claimed_before`` and never recorded: their sender stopped mid-POST. They
        keep their claim time (the zset's score) as the attempt's time. A claim whose job is gone (forgotten
        after its retention) is dropped."""
        cutoff: Any = "+inf" if claimed_before is None else claimed_before
        claims = await self.redis.zrangebyscore(f"{PREFIX}callbacks:sending", 0, cutoff, withscores=True)
        failed = []
        for raw, claimed_at in claims:
            job_id = raw.decode()
            status = await self.redis.hget(_key(job_id), "status")
            if await self._set_callback(job_id, CallbackRecord(
                    status=CallbackStatus.FAILED, error=error,
                    attempted_at=datetime.fromtimestamp(claimed_at, timezone.utc),
                    payload_status=JobStatus(status.decode()) if status else None)):
                failed.append(job_id)
            else:
                await self.redis.zrem(f"{PREFIX}callbacks:sending", job_id)
        return failed

    @guarded
    async def unfinished(self) -> list[JobRecord]:
        ids = await self.redis.zrange(f"{PREFIX}unfinished", 0, -1)
        return [job for job in [await self.get(raw.decode()) for raw in ids] if job is not None]

    @guarded
    async def pending_callbacks(self) -> list[JobRecord]:
        ids = await self.redis.smembers(f"{PREFIX}callbacks:pending")
        jobs = [await self.get(raw.decode()) for raw in ids]
        return sorted((job for job in jobs if job is not None), key=lambda job: job.queued_at)

    @guarded
    async def expire_finished_before(self, cutoff: float, swept_at: float) -> list[str]:
        ids = [raw.decode() for raw in await self.redis.zrangebyscore(f"{PREFIX}finished", 0, cutoff)]
        swept = []
        for job_id in ids:
            def sweep(pipe: Any, status: bytes, callback_status: Optional[bytes], job_id: str = job_id) -> None:
                pipe.hset(_key(job_id), "swept_at", str(swept_at))
                pipe.hdel(_key(job_id), "request")
                pipe.zrem(f"{PREFIX}finished", job_id)
                pipe.zadd(f"{PREFIX}swept", {job_id: swept_at})
                pipe.srem(f"{PREFIX}status:{status.decode()}", job_id)

            if await self._when(job_id, lambda status: True, sweep):
                swept.append(job_id)
            else:
                await self.redis.zrem(f"{PREFIX}finished", job_id)  # its record is gone: nothing to sweep
        return swept

    @guarded
    async def forget_swept_before(self, cutoff: float) -> int:
        ids = [raw.decode() for raw in await self.redis.zrangebyscore(f"{PREFIX}swept", 0, cutoff)]
        if ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*[_key(job_id) for job_id in ids])
                pipe.zrem(f"{PREFIX}swept", *ids)
                await pipe.execute()
        return len(ids)

    @guarded
    async def count_by_status(self) -> dict[str, int]:
        counts = {status.value: await self.redis.scard(f"{PREFIX}status:{status.value}") for status in JobStatus}
        return {status: count for status, count in counts.items() if count}

    async def _update(self, job_id: str, values: dict[str, Any], *, moves_to: Optional[JobStatus] = None,
                      also: Optional[Callable[[Any, Optional[bytes]], None]] = None) -> bool:
        """Write ``values`` (and ``also(pipe, callback_status)``'s index changes) in one transaction, if the job
        is there. A write that moves the status is made only while the job is unfinished: a finished job is
        never moved again (a late worker whose lease another took over cannot flip a completed job)."""
        key = _key(job_id)
        fields, cleared = _encode(values)

        def allowed(status: bytes) -> bool:
            return moves_to is None or not JobStatus(status.decode()).finished

        def write(pipe: Any, status: bytes, callback_status: Optional[bytes]) -> None:
            pipe.hset(key, mapping=fields)
            if cleared:
                pipe.hdel(key, *cleared)
            if moves_to is not None:
                pipe.srem(f"{PREFIX}status:{status.decode()}", job_id)
                pipe.sadd(f"{PREFIX}status:{moves_to.value}", job_id)
            if also is not None:
                also(pipe, callback_status)

        return await self._when(job_id, allowed, write)

    async def _when(self, job_id: str, allowed: Callable[[bytes], bool],
                    write: Callable[[Any, bytes, Optional[bytes]], Any]) -> bool:
        """Make ``write(pipe, status, callback_status)`` in one transaction if the job's hash exists and
        ``allowed(status)``, checked under WATCH (another process's write meanwhile: read again). False, and
        nothing written, otherwise: a write to a job that is gone (deleted, forgotten) never leaves a partial
        hash behind, which a later read would choke on."""
        key = _key(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    status, callback_status = await pipe.hmget(key, ["status", "callback_status"])
                    if status is None or not allowed(status):
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                    write(pipe, status, callback_status)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue


def _decode(raw: dict[bytes, bytes]) -> JobRecord:
    row: dict[str, Any] = {name: None for name in COLUMNS}
    for name, value in raw.items():
        column = name.decode()
        if column in row:
            row[column] = value.decode()
    return from_row(row)
