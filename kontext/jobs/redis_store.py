"""The ``JobStore`` in Redis, for many hosts: one hash per job, a few indexes, one transaction per operation.

Keys (prefix ``kontext:``): ``job:<id>`` (a hash of the SQLite store's columns), ``seq`` (arrival
order), ``unfinished`` (zset by seq), ``status:<status>`` (sets, for the counts), ``finished`` and
``swept`` (zsets by time, for retention), ``callbacks:pending`` (set), ``callbacks:sending`` (zset by
claim time). Writes run in MULTI/EXEC; the callback claim is one compare-and-set script.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from redis.exceptions import WatchError

from kontext.errors import JobConflict
from kontext.jobs.record import JobOutcome, JobRecord, now
from kontext.redis_client import guarded
from kontext.jobs.store import COLUMNS, from_row, to_row, typed_column
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

    @guarded
    async def get(self, job_id: str) -> Optional[JobRecord]:
        raw = await self.redis.hgetall(_key(job_id))
        return _decode(raw) if raw else None

    @guarded
    async def delete(self, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(_key(job_id))
            pipe.zrem(f"{PREFIX}unfinished", job_id)
            pipe.srem(f"{PREFIX}status:{JobStatus.QUEUED.value}", job_id)
            await pipe.execute()

    @guarded
    async def mark_started(self, job_id: str, *, started_at: float, attempts: int, worker: str) -> bool:
        return await self._update(job_id, {"status": JobStatus.PROCESSING.value, "started_at": started_at,
                                           "attempts": attempts, "worker": worker}, moves_to=JobStatus.PROCESSING)

    @guarded
    async def set_image_source(self, job_id: str, source: ImageSource) -> None:
        await self._update(job_id, {"image_source": source.value})

    @guarded
    async def count_store_retry(self, job_id: str) -> None:
        await self.redis.hincrby(_key(job_id), "store_retries", 1)

    @guarded
    async def mark_finished(self, job_id: str, outcome: JobOutcome) -> bool:
        values = {"status": outcome.status.value, "finished_at": outcome.finished_at, "error": outcome.error,
                  "result_sha256": outcome.result_sha256, "result_pixels_sha256": outcome.result_pixels_sha256,
                  "result_width": outcome.result_width, "result_height": outcome.result_height,
                  "recipe": outcome.recipe}

        def indexes(pipe: Any, callback_status: Optional[bytes]) -> None:
            pipe.zrem(f"{PREFIX}unfinished", job_id)
            pipe.zadd(f"{PREFIX}finished", {job_id: outcome.finished_at})
            if callback_status == CallbackStatus.PENDING.value.encode():
                pipe.sadd(f"{PREFIX}callbacks:pending", job_id)

        return await self._update(job_id, values, moves_to=outcome.status, also=indexes)

    @guarded
    async def claim_callback(self, job_id: str) -> bool:
        """pending -> sending, atomically across every process: only one of them POSTs."""
        claimed = await self._claim(keys=[_key(job_id), f"{PREFIX}callbacks:pending", f"{PREFIX}callbacks:sending"],
                                    args=[CallbackStatus.PENDING.value, CallbackStatus.SENDING.value, now(), job_id])
        return bool(claimed)

    @guarded
    async def set_callback(self, job_id: str, record: CallbackRecord) -> None:
        values = {"callback_status": record.status.value, "callback_status_code": record.status_code,
                  "callback_attempted_at": record.attempted_at.timestamp() if record.attempted_at else None,
                  "callback_error": record.error,
                  "callback_payload_status": record.payload_status.value if record.payload_status else None}

        def indexes(pipe: Any, callback_status: Optional[bytes]) -> None:
            pipe.zrem(f"{PREFIX}callbacks:sending", job_id)
            pipe.srem(f"{PREFIX}callbacks:pending", job_id)

        await self._update(job_id, values, also=indexes)

    @guarded
    async def fail_interrupted_callbacks(self, error: str, attempted_at: float,
                                         claimed_before: Optional[float] = None) -> list[str]:
        """Callbacks claimed before ``claimed_before`` and never recorded: their sender stopped mid-POST. They
        keep their claim time (the zset's score) as the attempt's time."""
        cutoff: Any = "+inf" if claimed_before is None else claimed_before
        claims = await self.redis.zrangebyscore(f"{PREFIX}callbacks:sending", 0, cutoff, withscores=True)
        for raw, claimed_at in claims:
            job_id = raw.decode()
            status = await self.redis.hget(_key(job_id), "status")
            await self.set_callback(job_id, CallbackRecord(
                status=CallbackStatus.FAILED, error=error, attempted_at=datetime.fromtimestamp(claimed_at, timezone.utc),
                payload_status=JobStatus(status.decode()) if status else None))
        return [raw.decode() for raw, _ in claims]

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
        for job_id in ids:
            status = await self.redis.hget(_key(job_id), "status")
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(_key(job_id), "swept_at", str(swept_at))
                pipe.hdel(_key(job_id), "request")
                pipe.zrem(f"{PREFIX}finished", job_id)
                pipe.zadd(f"{PREFIX}swept", {job_id: swept_at})
                if status:
                    pipe.srem(f"{PREFIX}status:{status.decode()}", job_id)
                await pipe.execute()
        return ids

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
                      also: Any = None) -> bool:
        """Write ``values`` (and ``also(pipe, callback_status)``'s index changes) in one transaction. A write
        that moves the status is checked and made under WATCH: a finished job is never moved again (a late
        worker whose lease another took over cannot flip a completed job); False when nothing was written."""
        key = _key(job_id)
        fields, cleared = _encode(values)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    old_status, callback_status = await pipe.hmget(key, ["status", "callback_status"])
                    if moves_to is not None and (old_status is None or JobStatus(old_status.decode()).finished):
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping=fields)
                    if cleared:
                        pipe.hdel(key, *cleared)
                    if moves_to is not None:
                        pipe.srem(f"{PREFIX}status:{old_status.decode()}", job_id)
                        pipe.sadd(f"{PREFIX}status:{moves_to.value}", job_id)
                    if also is not None:
                        also(pipe, callback_status)
                    await pipe.execute()
                    return True
                except WatchError:  # another process wrote this job meanwhile: read it again
                    continue


def _decode(raw: dict[bytes, bytes]) -> JobRecord:
    row: dict[str, Any] = {name: None for name in COLUMNS}
    for name, value in raw.items():
        column = name.decode()
        if column in row:
            row[column] = typed_column(column, value.decode())
    return from_row(row)
