"""The ``JobStore`` contract, run on both backends (SQLite; a real Redis, one server per module): round trips,
conflicts, finished jobs never moved again, writes to a job that is not there write nothing, delete only while
queued, one transaction per operation, column-owned writes, callbacks claimed once, tombstones, and one
exception type (``StorageUnavailable``) when the storage fails."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from kontext.errors import JobConflict, StorageUnavailable
from kontext.jobs.record import JobOutcome, JobRecord
from kontext.jobs.store import JobStore, SqliteJobStore
from protocol import CallbackRecord, CallbackStatus, EditRequest, ImageSource, JobStatus
from tests.unit.contracts.backends import fresh_redis_client, unreachable_redis

BACKENDS = ["sqlite", "redis"]


def _request(**extra: object) -> EditRequest:
    return EditRequest.model_validate({"prompt": "hat", "seed": 7, "image_b64": "QUJD", **extra})


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    client = None
    if request.param == "sqlite":
        backend: Any = SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        from kontext.jobs.redis_store import RedisJobStore

        client = await fresh_redis_client(request)
        backend = RedisJobStore(client)
    await backend.open()
    yield backend
    await backend.close()
    if client is not None:
        await client.aclose()


async def _nothing_stored(store: JobStore) -> bool:
    return await store.unfinished() == [] and await store.count_by_status() == {} \
        and await store.pending_callbacks() == []


# -- round trips ----------------------------------------------------------------------------------------------


async def test_round_trip_keeps_everything_but_image_bytes(store: JobStore) -> None:
    job = JobRecord(id="edit-1", request=_request(callback_url="http://h/cb", callback_secret="s3"),
                    image_source=ImageSource.BASE64, priority=2.5)
    await store.insert(job)
    loaded = await store.get("edit-1")
    assert loaded is not None
    assert loaded.request.prompt == "hat" and loaded.request.image_b64 is None
    assert loaded.request.callback_secret == "s3"  # kept to send the callback after a restart
    assert loaded == job.evolve(request=job.request.model_copy(update={"image_b64": None}))
    assert await store.get("edit-2") is None


async def test_every_field_of_a_record_and_of_an_outcome_round_trips(store: JobStore) -> None:
    """The columns are derived from the dataclasses: a record with every field set comes back equal, and
    mark_finished writes each field of JobOutcome."""
    full = JobRecord(id="full", request=_request(), status=JobStatus.PROCESSING, priority=7.25,
                     image_source=ImageSource.URL, queued_at=1.5, started_at=2.5, attempts=3,
                     store_retries=1, worker="host:1/w0", callback_status=CallbackStatus.SKIPPED)
    await store.insert(full)
    assert await store.get("full") == full.evolve(request=full.request.model_copy(update={"image_b64": None}))
    outcome = JobOutcome(status=JobStatus.COMPLETED, finished_at=9.75, error="none really", result_sha256="ab",
                         result_pixels_sha256="cd", result_width=64, result_height=48, recipe="reference-v1")
    assert await store.mark_finished("full", outcome)
    job = await store.get("full")
    assert job is not None
    assert {name: getattr(job, name) for name in dataclasses.asdict(outcome)} == dataclasses.asdict(outcome)
    assert (job.started_at, job.attempts, job.worker) == (2.5, 3, "host:1/w0")  # not the outcome's: untouched


async def test_duplicate_id_is_a_conflict(store: JobStore) -> None:
    await store.insert(JobRecord(id="edit-1", request=_request()))
    with pytest.raises(JobConflict):
        await store.insert(JobRecord(id="edit-1", request=_request(prompt="another")))
    assert (await store.get("edit-1")).request.prompt == "hat"  # type: ignore[union-attr]


async def test_store_retries_are_counted(store: JobStore) -> None:
    await store.insert(JobRecord(id="j", request=_request()))
    await store.count_store_retry("j")
    await store.count_store_retry("j")
    assert (await store.get("j")).store_retries == 2  # type: ignore[union-attr]


# -- what may move, and when --------------------------------------------------------------------------------


async def test_a_finished_job_is_never_started_or_finished_again(store: JobStore) -> None:
    """A worker whose lease another took over may still reach mark_started or mark_finished late: a job ends
    once, and a completed job is never flipped back to processing or to failed."""
    await store.insert(JobRecord(id="j", request=_request()))
    assert await store.mark_started("j", started_at=1.0, attempts=1, worker="w-a")
    done = JobOutcome(status=JobStatus.COMPLETED, finished_at=2.0, result_sha256="ab")
    assert await store.mark_finished("j", done)
    assert not await store.mark_started("j", started_at=3.0, attempts=2, worker="w-b")
    assert not await store.mark_finished("j", JobOutcome(status=JobStatus.FAILED, finished_at=4.0, error="late"))
    job = await store.get("j")
    assert job is not None and job.status is JobStatus.COMPLETED and job.worker == "w-a" and job.attempts == 1
    assert job.error is None and job.finished_at == 2.0
    assert await store.count_by_status() == {"completed": 1}


async def test_delete_removes_a_job_that_was_never_queued(store: JobStore) -> None:
    await store.insert(JobRecord(id="orphan", request=_request()))
    await store.delete("orphan")
    assert await store.get("orphan") is None and await _nothing_stored(store)
    await store.insert(JobRecord(id="orphan", request=_request()))  # the caller's retry with its job_id works


async def test_delete_leaves_a_job_that_is_no_longer_queued(store: JobStore) -> None:
    """Redis deleted whatever it was asked to: a started or finished job, with its result's record."""
    await store.insert(JobRecord(id="running", request=_request()))
    await store.mark_started("running", started_at=1.0, attempts=1, worker="w0")
    await store.insert(JobRecord(id="done", request=_request()))
    await store.mark_finished("done", JobOutcome(status=JobStatus.COMPLETED, finished_at=2.0))
    await store.delete("running")
    await store.delete("done")
    assert (await store.get("running")).status is JobStatus.PROCESSING  # type: ignore[union-attr]
    assert (await store.get("done")).status is JobStatus.COMPLETED  # type: ignore[union-attr]
    assert await store.count_by_status() == {"processing": 1, "completed": 1}


async def test_writes_to_a_job_that_is_not_there_write_nothing(store: JobStore) -> None:
    """Redis's HSET/HINCRBY made a partial hash of a missing job (a late set_callback after a sweep), which
    the next read turned into a 500."""
    assert not await store.mark_started("ghost", started_at=1.0, attempts=1, worker="w0")
    assert not await store.mark_finished("ghost", JobOutcome(status=JobStatus.FAILED, finished_at=2.0, error="x"))
    await store.set_image_source("ghost", ImageSource.BASE64)
    await store.count_store_retry("ghost")
    await store.set_callback("ghost", CallbackRecord(status=CallbackStatus.DELIVERED, status_code=204))
    assert not await store.claim_callback("ghost")
    assert await store.get("ghost") is None and await _nothing_stored(store)
    await store.delete("ghost")
    assert await store.get("ghost") is None and await _nothing_stored(store)


async def test_a_late_callback_record_after_the_job_was_forgotten_writes_nothing(store: JobStore) -> None:
    await store.insert(JobRecord(id="old", request=_request(callback_url="http://h/cb")))
    await store.mark_finished("old", JobOutcome(status=JobStatus.COMPLETED, finished_at=10.0))
    assert await store.claim_callback("old")
    assert await store.expire_finished_before(cutoff=20.0, swept_at=30.0) == ["old"]
    assert await store.forget_swept_before(cutoff=40.0) == 1
    await store.set_callback("old", CallbackRecord(status=CallbackStatus.DELIVERED, status_code=204))
    assert await store.fail_interrupted_callbacks("stopped mid-POST", 50.0) == []
    assert await store.get("old") is None and await _nothing_stored(store)


# -- transactions and owned columns ---------------------------------------------------------------------------


async def test_a_failed_insert_never_discards_other_writes(store: JobStore) -> None:
    """Each operation is its own transaction: a conflicting insert rolls back itself, not its neighbours."""
    for index in range(20):
        await store.insert(JobRecord(id=f"job-{index}", request=_request()))
    duplicates = [store.insert(JobRecord(id=f"job-{index}", request=_request())) for index in range(20)]
    starts = [store.mark_started(f"job-{index}", started_at=float(index), attempts=1, worker="w0")
              for index in range(20)]
    interleaved = [op for pair in zip(starts, duplicates) for op in pair]
    results = await asyncio.gather(*interleaved, return_exceptions=True)
    assert sum(isinstance(result, JobConflict) for result in results) == 20
    assert [(await store.get(f"job-{i}")).attempts for i in range(20)] == [1] * 20  # type: ignore[union-attr]


async def test_each_write_owns_its_columns(store: JobStore) -> None:
    """Finishing a job never overwrites the callback outcome recorded meanwhile (and vice versa): the old
    whole-row save wrote back the worker's stale copy."""
    await store.insert(JobRecord(id="a", request=_request(callback_url="http://h/cb")))
    worker_copy = await store.get("a")
    await store.set_callback("a", CallbackRecord(status=CallbackStatus.EXPIRED, error="expired"))
    await store.mark_finished("a", JobOutcome(status=JobStatus.COMPLETED, finished_at=5.0, result_sha256="ab"))
    await store.expire_finished_before(cutoff=1.0, swept_at=2.0)  # a sweep that touches nothing here
    job = await store.get("a")
    assert job is not None and worker_copy is not None and worker_copy.callback_status is CallbackStatus.PENDING
    assert job.callback_status is CallbackStatus.EXPIRED and job.status is JobStatus.COMPLETED
    assert job.result_sha256 == "ab" and job.swept_at is None


# -- recovery queries, callbacks, retention ---------------------------------------------------------------------


async def test_unfinished_and_pending_callbacks(store: JobStore) -> None:
    for job_id in ("a", "b", "c"):
        await store.insert(JobRecord(id=job_id, request=_request()))
    await store.mark_started("b", started_at=50.0, attempts=1, worker="w0")
    await store.mark_finished("c", JobOutcome(status=JobStatus.COMPLETED, finished_at=100.0, result_sha256="ab"))
    assert [j.id for j in await store.unfinished()] == ["a", "b"]
    assert [j.id for j in await store.pending_callbacks()] == ["c"]
    await store.set_callback("c", CallbackRecord(status=CallbackStatus.DELIVERED, status_code=204,
                                                 attempted_at=datetime.fromtimestamp(200.0, timezone.utc),
                                                 payload_status=JobStatus.COMPLETED))
    assert await store.pending_callbacks() == []
    loaded = await store.get("c")
    assert loaded is not None and loaded.callback_status is CallbackStatus.DELIVERED
    assert (loaded.callback_status_code, loaded.callback_attempted_at) == (204, 200.0)
    assert loaded.callback_payload_status is JobStatus.COMPLETED
    assert await store.count_by_status() == {"queued": 1, "processing": 1, "completed": 1}


async def test_claim_is_once_and_an_interrupted_send_becomes_failed(store: JobStore) -> None:
    await store.insert(JobRecord(id="a", request=_request(callback_url="http://h/cb")))
    await store.mark_finished("a", JobOutcome(status=JobStatus.COMPLETED, finished_at=5.0))
    assert await store.claim_callback("a") is True
    assert await store.claim_callback("a") is False  # nobody sends it a second time
    assert await store.pending_callbacks() == []
    claimed = await store.get("a")
    assert claimed is not None and claimed.callback_attempted_at is not None
    assert await store.fail_interrupted_callbacks("stopped mid-POST", 9.0) == ["a"]
    job = await store.get("a")
    assert job is not None and job.callback_status is CallbackStatus.FAILED
    assert job.callback_attempted_at == pytest.approx(claimed.callback_attempted_at)  # when the POST began
    assert job.callback_error == "stopped mid-POST" and job.callback_payload_status is JobStatus.COMPLETED
    assert await store.fail_interrupted_callbacks("again", 10.0) == []  # at most once


async def test_sweep_leaves_a_tombstone_then_forgets(store: JobStore) -> None:
    await store.insert(JobRecord(id="old", request=_request()))
    await store.mark_finished("old", JobOutcome(status=JobStatus.COMPLETED, finished_at=10.0))
    await store.insert(JobRecord(id="new", request=_request()))
    await store.mark_finished("new", JobOutcome(status=JobStatus.COMPLETED, finished_at=1000.0))
    assert await store.expire_finished_before(cutoff=500.0, swept_at=600.0) == ["old"]
    tomb = await store.get("old")
    assert tomb is not None and tomb.swept_at == 600.0 and tomb.request.prompt == ""
    assert tomb.status is JobStatus.COMPLETED and await store.count_by_status() == {"completed": 1}
    assert await store.forget_swept_before(cutoff=700.0) == 1
    assert await store.get("old") is None and await store.get("new") is not None


# -- one exception type -------------------------------------------------------------------------------------------


class _CorruptDatabase:
    """Stands in for the SQLite connection of a file that went bad under the store (what SQLite says then)."""

    in_transaction = False

    def execute(self, *args: Any) -> Any:
        raise sqlite3.DatabaseError("file is not a database")

    executemany = execute


@pytest.fixture(params=BACKENDS)
async def failing_store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A store whose storage fails under it: a corrupt SQLite file; a Redis that cannot be reached."""
    if request.param == "sqlite":
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        await store.open()
        real, store._db = store._db, _CorruptDatabase()  # type: ignore[assignment]
        yield store
        store._db = real
        await store.close()
    else:
        from kontext.jobs.redis_store import RedisJobStore

        client = unreachable_redis()
        yield RedisJobStore(client)
        await client.aclose()


async def test_every_operation_fails_with_storage_unavailable(failing_store: Any) -> None:
    """A corrupt SQLite file was a sqlite3.DatabaseError (a 500), and only OperationalError was mapped."""
    outcome = JobOutcome(status=JobStatus.COMPLETED, finished_at=1.0)
    callback = CallbackRecord(status=CallbackStatus.DELIVERED)
    calls = {
        "insert": lambda: failing_store.insert(JobRecord(id="j", request=_request())),
        "get": lambda: failing_store.get("j"),
        "delete": lambda: failing_store.delete("j"),
        "mark_started": lambda: failing_store.mark_started("j", started_at=1.0, attempts=1, worker="w"),
        "set_image_source": lambda: failing_store.set_image_source("j", ImageSource.BASE64),
        "count_store_retry": lambda: failing_store.count_store_retry("j"),
        "mark_finished": lambda: failing_store.mark_finished("j", outcome),
        "claim_callback": lambda: failing_store.claim_callback("j"),
        "set_callback": lambda: failing_store.set_callback("j", callback),
        "fail_interrupted_callbacks": lambda: failing_store.fail_interrupted_callbacks("e", 1.0),
        "unfinished": failing_store.unfinished,
        "pending_callbacks": failing_store.pending_callbacks,
        "expire_finished_before": lambda: failing_store.expire_finished_before(1.0, 2.0),
        "forget_swept_before": lambda: failing_store.forget_swept_before(1.0),
        "count_by_status": failing_store.count_by_status,
    }
    operations = {name for name in vars(JobStore) if not name.startswith("_")} - {"open", "close"}
    assert set(calls) == operations  # every operation of the interface is tried
    escaped = {}
    for name, call in calls.items():
        try:
            await call()
        except StorageUnavailable:
            continue
        except Exception as exc:  # noqa: BLE001 - what the test is after
            escaped[name] = f"{type(exc).__name__}: {exc}"
        else:
            escaped[name] = "nothing raised"
    assert escaped == {}
