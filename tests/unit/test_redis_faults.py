"""The shared queue under the faults a many-host deployment meets, on a real redis-server (fake engines):
a worker cut off by its shutdown, a lease that lapsed while its worker lived on, a door that stored a job
but could not queue it, a Redis that lost its streams or ran out of memory, a helper task meeting an
outage, and an orphan behind many held entries. Each of these lost or doubled a job before."""

from __future__ import annotations

import asyncio
import base64
import threading
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_errors

from kontext.errors import StartupError, StorageUnavailable
from kontext.http.errors import answer
from kontext.jobs.record import JobRecord
from kontext.jobs.redis_queue import GROUP, RedisJobQueue
from kontext.runtime import Runtime
from protocol import EditRequest, JobStatus
from tests.fakes import FakeEngine, png_bytes
from tests.unit.test_sidecar import make_settings
from tests.waiting import until

IMAGE_B64 = base64.b64encode(png_bytes((32, 32), (10, 20, 30))).decode()


@pytest.fixture
def redis_server(module_redis_server: Any, fresh_redis: Any) -> Any:
    """The module's one redis-server, emptied before each test (a start per test cost more than most tests)."""
    return module_redis_server


@pytest.fixture
def redis_client(fresh_redis: Any) -> Any:
    return fresh_redis


def _request(seed: int, **extra: object) -> EditRequest:
    return EditRequest.model_validate({"prompt": "p", "seed": seed, "image_b64": IMAGE_B64, **extra})


def _settings(tmp_path: Path, redis_server: Any, name: str, **extra: object):  # type: ignore[no-untyped-def]
    return make_settings(tmp_path / name, job_backend="redis", redis_url=redis_server.url, worker_name=name,
                         **extra)


def _refuse(monkeypatch: Any, queue: Any, method: str, times: int) -> dict[str, int]:
    """The queue's next ``times`` calls of ``method`` (put, requeue) fail as a Redis outage would; the count
    left is returned, live."""
    real = getattr(queue, method)
    failures = {"left": times}

    async def refusing(*args: Any, **kwargs: Any) -> bool:
        if failures["left"]:
            failures["left"] -= 1
            raise StorageUnavailable("the job store (Redis) is unreachable: test")
        return await real(*args, **kwargs)

    monkeypatch.setattr(queue, method, refusing)
    return failures


async def _owner(redis_client: Any, stream: str, entry_id: str) -> str:
    [pending] = await redis_client.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
    return pending["consumer"].decode()


async def test_a_job_cut_off_by_a_worker_shutdown_is_taken_over_after_the_lease(tmp_path: Path,
                                                                                redis_server) -> None:
    """The cancelled run closed (acked and deleted) its entry: the job stayed 'processing' for ever."""
    gate = threading.Event()
    door = Runtime(_settings(tmp_path, redis_server, "door"), role="door")
    first = Runtime(_settings(tmp_path, redis_server, "first", redis_lease_seconds=0.6),
                    engines=[FakeEngine(gate=gate)], role="worker")
    second = Runtime(_settings(tmp_path, redis_server, "second", redis_lease_seconds=0.6),
                     engines=[FakeEngine()], role="worker")
    await door.start()
    await first.start()
    try:
        job_id = (await door.service.submit(_request(1))).job_id

        async def running() -> bool:
            return (await door.service.status(job_id)).status is JobStatus.PROCESSING

        await until(running)
        await first.stop(grace_seconds=0.1)  # cut off mid-job: it must run again elsewhere
        await second.start()

        async def completed() -> bool:
            return (await door.service.status(job_id)).status is JobStatus.COMPLETED

        await until(completed)
        status = await door.service.status(job_id)
        assert status.worker is not None and status.worker.startswith("second/") and status.attempts == 2
    finally:
        gate.set()
        for runtime in (second, first, door):
            await runtime.stop()


async def test_a_lapsed_lease_is_never_taken_back_nor_closed_by_its_old_worker(redis_client: Any, caplog) -> None:
    """The renewer's XCLAIM (min idle 0) took an entry back from the worker that had taken it over, and the
    old worker's done() acknowledged the new owner's entry: the job ran twice, or its entry vanished."""
    slow = RedisJobQueue(redis_client, consumer="slow", lease_seconds=0.6)
    fast = RedisJobQueue(redis_client, consumer="fast", lease_seconds=0.6)
    await slow.open()
    await fast.open()
    await slow.put("job", 0)
    held = await slow.get()  # then slow cannot renew for longer than its lease (an outage on its side)
    await asyncio.sleep(0.8)
    taken = await asyncio.wait_for(fast.get(), 5)
    assert taken.job_id == "job" and taken.redelivered
    stream, entry_id = taken.receipt
    assert await _owner(redis_client, stream, entry_id) == "fast"
    slow.start_renewing()  # slow's side is back: its renewer runs again
    try:
        async def let_go() -> bool:  # its renewer met the entry, found it another's, and stopped holding it
            return "lost the lease of job job to another worker" in caplog.text

        await until(let_go, what="the old worker's renewer letting the entry go")
        assert await _owner(redis_client, stream, entry_id) == "fast"  # not taken back
        await slow.done(held)  # slow's run ends late: the entry is fast's, it stays open
        assert await _owner(redis_client, stream, entry_id) == "fast"
        await fast.done(taken)
        assert await redis_client.xlen(stream) == 0
    finally:
        await slow.close()


async def test_an_orphan_behind_many_held_entries_is_still_taken_over(redis_client: Any) -> None:
    """XAUTOCLAIM scans a bounded slice of the pending list per call; always starting at 0-0, a takeover
    never reached an orphan behind ten or more entries other workers still held."""
    holder = RedisJobQueue(redis_client, consumer="holder", lease_seconds=1.5)
    dead = RedisJobQueue(redis_client, consumer="dead", lease_seconds=1.5)
    taker = RedisJobQueue(redis_client, consumer="taker", lease_seconds=1.5)
    for queue in (holder, dead, taker):
        await queue.open()
    for index in range(12):
        await holder.put(f"held-{index}", 0)
    held = [await holder.get() for _ in range(12)]
    holder.start_renewing()
    try:
        await dead.put("orphan", 0)
        await dead.get()  # then "dead" stops for good
        await asyncio.sleep(1.6)  # past the orphan's lease; the held ones are renewed every 0.5 s
        taken = await asyncio.wait_for(taker.get(), 10)
        assert taken.job_id == "orphan" and taken.redelivered
        assert {entry.job_id for entry in held} == {f"held-{index}" for index in range(12)}
    finally:
        await holder.close()


async def test_a_stored_job_that_could_not_be_queued_is_undone_and_the_retry_is_accepted(
        tmp_path: Path, redis_server, monkeypatch) -> None:
    """The record was written, the queue put failed: 503, and the caller's retry with its job_id got a 409
    while the job sat 'queued' for ever."""
    door = Runtime(_settings(tmp_path, redis_server, "door"), role="door")
    await door.start()
    try:
        _refuse(monkeypatch, door.queue, "put", 1)
        with pytest.raises(StorageUnavailable, match="cannot take new jobs"):
            await door.service.submit(_request(1, job_id="validator-job-1"))
        assert await door.store.get("validator-job-1") is None
        accepted = await door.service.submit(_request(1, job_id="validator-job-1"))  # the retry
        assert accepted.job_id == "validator-job-1"
        assert await door.queue.position("validator-job-1") == 1
    finally:
        await door.stop()


async def test_a_stored_job_with_no_queue_entry_is_queued_again_by_a_door(tmp_path: Path, redis_server,
                                                                          monkeypatch) -> None:
    """A door killed between storing a job and queueing it left the job 'queued' with no entry: nothing ever
    ran it. A door now queues such orphans again (and only those: queued or held entries are left alone)."""
    import kontext.runtime

    monkeypatch.setattr(kontext.runtime, "ORPHAN_CHECK_SECONDS", 0.2)
    door = Runtime(_settings(tmp_path, redis_server, "door"), role="door")
    await door.start()
    try:
        queued = (await door.service.submit(_request(3))).job_id
        await door.store.insert(JobRecord(id="young", request=_request(2)))  # its submit may be under way
        await door.store.insert(JobRecord(id="orphan", request=_request(1), queued_at=1.0, priority=10.0))

        async def orphan_queued() -> bool:
            return await door.queue.position("orphan") == 1  # at its own priority, ahead of the stake-0 job

        await until(orphan_queued)
        assert isinstance(door.queue, RedisJobQueue)
        assert await door.upkeep.requeue_orphans(await door.queue.job_ids()) == []
        assert await door.queue.position(queued) == 2 and await door.queue.position("young") is None
    finally:
        await door.stop()


async def test_a_worker_survives_redis_losing_its_streams(tmp_path: Path, redis_server, redis_client: Any) -> None:
    """A Redis restarted without its AOF (or flushed) has no consumer group: XREADGROUP answers NOGROUP, a
    non-connection error that ended the worker's task for good while its /health still said ok."""
    door = Runtime(_settings(tmp_path, redis_server, "door"), role="door")
    worker = Runtime(_settings(tmp_path, redis_server, "worker"), engines=[FakeEngine()], role="worker")
    await door.start()
    await worker.start()
    try:
        first = (await door.service.submit(_request(1))).job_id

        async def finished(job_id: str) -> bool:
            return (await door.service.status(job_id)).status is JobStatus.COMPLETED

        await until(lambda: finished(first))
        queue = worker.queue
        assert isinstance(queue, RedisJobQueue)
        await redis_client.delete(*queue.streams)  # the streams and their group are gone

        async def group_made_again() -> bool:  # by the worker, whose blocking read met NOGROUP
            try:
                return all([await redis_client.xinfo_groups(stream) for stream in queue.streams])
            except redis_errors.ResponseError:  # no such key (yet)
                return False

        await until(group_made_again, what="the worker making the consumer group again")
        second = (await door.service.submit(_request(2))).job_id
        await until(lambda: finished(second))
        assert worker.health()["status"] == "ok"
    finally:
        for runtime in (worker, door):
            await runtime.stop()


async def test_redis_out_of_memory_is_a_503_not_a_500(tmp_path: Path, redis_server, redis_client: Any) -> None:
    """With the recommended maxmemory + noeviction, a full Redis refuses writes with OOM: a ResponseError,
    which escaped as a 500."""
    door = Runtime(_settings(tmp_path, redis_server, "door"), role="door")
    await door.start()
    try:
        used = (await redis_client.info("memory"))["used_memory"]
        await redis_client.config_set("maxmemory-policy", "noeviction")
        await redis_client.config_set("maxmemory", str(used + 1024))
        try:
            with pytest.raises(StorageUnavailable, match="OutOfMemoryError|OOM") as refused:
                await door.service.submit(_request(1, job_id="too-much"))
            assert answer(refused.value)[0] == 503 and answer(refused.value)[2]["Retry-After"]
        finally:
            await redis_client.config_set("maxmemory", "0")
    finally:
        await door.stop()


async def test_a_redis_older_than_6_2_is_refused_at_start_with_the_reason(redis_client: Any, monkeypatch) -> None:
    queue = RedisJobQueue(redis_client, consumer="c", lease_seconds=30)

    async def old_server(section: str) -> dict:
        return {"redis_version": "6.0.16"}

    monkeypatch.setattr(redis_client, "info", old_server)
    with pytest.raises(StartupError, match=r"Redis 6.0.16 is too old: the queue needs Redis 6.2 or newer"):
        await queue.open()


async def test_a_requeue_that_meets_an_outage_is_tried_until_it_works(tmp_path: Path, redis_server,
                                                                      monkeypatch) -> None:
    """A chained job waits for its reference as a deferred entry; a defer that meets an outage is tried until it
    works (a helper task's put once died there, leaving the entry held, and renewed, for ever: the job never ran)."""
    import kontext.jobs.persist

    monkeypatch.setattr(kontext.jobs.persist, "FIRST_WAIT_SECONDS", 0.05)
    gate = threading.Event()
    door = Runtime(_settings(tmp_path, redis_server, "door"), role="door")
    worker = Runtime(_settings(tmp_path, redis_server, "worker"),  # whichever worker takes the reference holds it
                     engines=[FakeEngine(gate=gate), FakeEngine(gate=gate)], role="worker")
    await door.start()
    await worker.start()
    try:
        failures = _refuse(monkeypatch, worker.queue, "defer", 3)  # an outage as it defers the chained job
        reference = (await door.service.submit(_request(1))).job_id
        chained = (await door.service.submit(_request(2, reference_job_id=reference))).job_id

        async def outage_met() -> bool:
            return failures["left"] == 0

        await until(outage_met, what="the chained job's defers meeting the outage")
        gate.set()

        async def chained_done() -> bool:
            return (await door.service.status(chained)).status is JobStatus.COMPLETED

        await until(chained_done)
        assert failures["left"] == 0
    finally:
        gate.set()
        for runtime in (worker, door):
            await runtime.stop()


async def test_a_worker_process_metrics_show_the_shared_queue_depth(tmp_path: Path, redis_server) -> None:
    """kontext-worker's /metrics said kontext_queue_depth 0 whatever was waiting: its gauge was never fed."""
    gate = threading.Event()
    door = Runtime(_settings(tmp_path, redis_server, "door"), role="door")
    worker = Runtime(_settings(tmp_path, redis_server, "worker"), engines=[FakeEngine(gate=gate)], role="worker")
    await door.start()
    await worker.start()
    try:
        for seed in range(3):  # one runs (held), two wait
            await door.service.submit(_request(seed))

        async def two_waiting() -> bool:
            return "kontext_queue_depth 2.0" in worker.metrics.render().decode()

        await until(two_waiting)
    finally:
        gate.set()
        for runtime in (worker, door):
            await runtime.stop()
