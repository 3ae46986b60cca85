"""SQLite job store: round trips, conflicts, recovery queries, tombstones, durability across reopen,
one transaction per operation, column-owned updates, and migrations from the first release's schema."""

import asyncio
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from kontext.errors import JobConflict, StartupError, StorageUnavailable
from kontext.http.errors import answer
from kontext.jobs.migrations import LATEST
from kontext.jobs.record import JobOutcome, JobRecord
from kontext.jobs.store import SqliteJobStore, StoreClosed
from protocol import CallbackRecord, CallbackStatus, EditRequest, ImageSource, JobStatus


def _request(**extra: object) -> EditRequest:
    return EditRequest.model_validate({"prompt": "hat", "seed": 7, "image_b64": "QUJD", **extra})


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path):
    """Every contract test runs on both backends: SQLite (one host) and a real Redis (many hosts)."""
    if request.param == "sqlite":
        backend: Any = SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        from kontext.jobs.redis_store import RedisJobStore
        from kontext.redis_client import connect

        server = request.getfixturevalue("redis_server")
        client = connect(server.url)
        backend = RedisJobStore(client)
    await backend.open()
    yield backend
    await backend.close()
    if request.param == "redis":
        await client.aclose()


@pytest.fixture
async def sqlite_store(tmp_path: Path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    yield store
    await store.close()


async def test_a_finished_job_is_never_started_or_finished_again(store: SqliteJobStore) -> None:
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


async def test_delete_removes_a_job_that_was_never_queued(store: SqliteJobStore) -> None:
    await store.insert(JobRecord(id="orphan", request=_request()))
    await store.delete("orphan")
    assert await store.get("orphan") is None and await store.unfinished() == []
    assert await store.count_by_status() == {}
    await store.insert(JobRecord(id="orphan", request=_request()))  # the caller's retry with its job_id works


async def test_round_trip_keeps_everything_but_image_bytes(store: SqliteJobStore) -> None:
    job = JobRecord(id="edit-1", request=_request(callback_url="http://h/cb", callback_secret="s3"),
                    image_source=ImageSource.BASE64, priority=2.5)
    await store.insert(job)
    loaded = await store.get("edit-1")
    assert loaded is not None
    assert loaded.request.prompt == "hat" and loaded.request.image_b64 is None
    assert loaded.request.callback_secret == "s3"  # kept to send the callback after a restart
    assert loaded.image_source is ImageSource.BASE64 and loaded.priority == 2.5
    assert loaded.status is JobStatus.QUEUED
    assert await store.get("edit-2") is None


async def test_duplicate_id_is_a_conflict(store: SqliteJobStore) -> None:
    await store.insert(JobRecord(id="edit-1", request=_request()))
    with pytest.raises(JobConflict):
        await store.insert(JobRecord(id="edit-1", request=_request()))


async def test_unfinished_and_pending_callbacks(store: SqliteJobStore) -> None:
    await store.insert(JobRecord(id="a", request=_request()))
    await store.insert(JobRecord(id="b", request=_request()))
    await store.insert(JobRecord(id="c", request=_request()))
    await store.mark_started("b", started_at=50.0, attempts=1, worker="w0")
    await store.mark_finished("c", JobOutcome(status=JobStatus.COMPLETED, finished_at=100.0, result_sha256="ab",
                                              result_pixels_sha256="cd", result_width=64, result_height=48,
                                              recipe="reference-v1"))
    assert [j.id for j in await store.unfinished()] == ["a", "b"]
    assert [j.id for j in await store.pending_callbacks()] == ["c"]
    await store.set_callback("c", CallbackRecord(status=CallbackStatus.DELIVERED, status_code=204,
                                                 attempted_at=datetime.now(timezone.utc),
                                                 payload_status=JobStatus.COMPLETED))
    assert await store.pending_callbacks() == []
    loaded = await store.get("c")
    assert loaded.callback_status is CallbackStatus.DELIVERED and loaded.callback_status_code == 204
    assert (loaded.result_pixels_sha256, loaded.result_width, loaded.result_height, loaded.recipe) == (
        "cd", 64, 48, "reference-v1")
    assert (await store.get("b")).attempts == 1  # type: ignore[union-attr]
    assert await store.count_by_status() == {"queued": 1, "processing": 1, "completed": 1}


async def test_sweep_leaves_a_tombstone_then_forgets(store: SqliteJobStore) -> None:
    await store.insert(JobRecord(id="old", request=_request()))
    await store.mark_finished("old", JobOutcome(status=JobStatus.COMPLETED, finished_at=10.0))
    await store.insert(JobRecord(id="new", request=_request()))
    await store.mark_finished("new", JobOutcome(status=JobStatus.COMPLETED, finished_at=1000.0))
    assert await store.expire_finished_before(cutoff=500.0, swept_at=600.0) == ["old"]
    tomb = await store.get("old")
    assert tomb is not None and tomb.swept_at == 600.0 and tomb.request.prompt == ""
    assert await store.forget_swept_before(cutoff=700.0) == 1
    assert await store.get("old") is None and await store.get("new") is not None


async def test_jobs_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    first = SqliteJobStore(path)
    await first.open()
    await first.insert(JobRecord(id="edit-keep", request=_request()))
    await first.close()
    second = SqliteJobStore(path)
    await second.open()
    assert [j.id for j in await second.unfinished()] == ["edit-keep"]
    await second.close()


async def test_a_failed_insert_never_discards_other_writes(store: SqliteJobStore) -> None:
    """Each operation is its own transaction: a conflicting insert rolls back itself, not its neighbours."""
    for index in range(20):
        await store.insert(JobRecord(id=f"job-{index}", request=_request()))
    duplicates = [store.insert(JobRecord(id=f"job-{index}", request=_request())) for index in range(20)]
    starts = [store.mark_started(f"job-{index}", started_at=float(index), attempts=1, worker="w0") for index in range(20)]
    interleaved = [op for pair in zip(starts, duplicates) for op in pair]
    results = await asyncio.gather(*interleaved, return_exceptions=True)
    assert sum(isinstance(result, JobConflict) for result in results) == 20
    assert [(await store.get(f"job-{i}")).attempts for i in range(20)] == [1] * 20  # type: ignore[union-attr]


async def test_a_write_that_fails_midway_leaves_nothing_behind(sqlite_store: SqliteJobStore) -> None:
    store = sqlite_store
    """The disk-full path: whatever the transaction wrote before the error is rolled back, and the store
    keeps working."""
    await store.insert(JobRecord(id="a", request=_request()))

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("UPDATE jobs SET status = 'processing', attempts = 5 WHERE id = 'a'")
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(StorageUnavailable, match="disk is full") as info:  # a 503 with Retry-After, not a 500
        await store._write(half_then_fail)
    assert answer(info.value)[0] == 503 and answer(info.value)[2]["Retry-After"]
    job = await store.get("a")
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0
    await store.mark_started("a", started_at=1.0, attempts=1, worker="w0")
    assert (await store.get("a")).attempts == 1  # type: ignore[union-attr]


async def test_each_write_owns_its_columns(store: SqliteJobStore) -> None:
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


async def test_claim_is_once_and_an_interrupted_send_becomes_failed(store: SqliteJobStore) -> None:
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


FIRST_RELEASE_SCHEMA = (Path(__file__).parent / "fixtures" / "jobs_schema_v1.sql").read_text()


async def test_a_data_directory_from_the_first_release_opens(tmp_path: Path) -> None:
    """A database written by the first release's schema (user_version 1, a run_ms column) is migrated in place."""
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(FIRST_RELEASE_SCHEMA)
    old.execute(
        "INSERT INTO jobs (id, seq, status, priority, request, image_source, queued_at, started_at, finished_at, "
        "result_sha256, recipe, attempts, run_ms, callback_status) VALUES ('edit-old', 1, 'completed', 0, ?, "
        "'base64', 10.0, 11.0, 12.5, 'abc', 'kontext-v1', 1, 1500, 'delivered')",
        (_request().model_dump_json(exclude={"image_b64"}),))
    old.execute("INSERT INTO jobs (id, seq, status, request, queued_at, callback_status) VALUES "
                "('edit-waiting', 2, 'queued', ?, 20.0, 'pending')", (_request().model_dump_json(),))
    old.commit()
    old.close()

    store = SqliteJobStore(path)
    await store.open()
    try:
        job = await store.get("edit-old")
        assert job is not None and job.result_sha256 == "abc" and job.recipe == "kontext-v1"
        assert job.result_pixels_sha256 is None and job.run_seconds == 1.5  # derived now, not stored
        assert [j.id for j in await store.unfinished()] == ["edit-waiting"]
        await store.mark_finished("edit-waiting", JobOutcome(status=JobStatus.COMPLETED, finished_at=30.0,
                                                             result_pixels_sha256="ef", result_width=8))
        assert (await store.get("edit-waiting")).result_pixels_sha256 == "ef"  # type: ignore[union-attr]
    finally:
        await store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert "run_ms" not in [row[1] for row in check.execute("PRAGMA table_info(jobs)")]
    check.close()


async def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version = {LATEST + 1}")
    newer.close()
    with pytest.raises(StartupError, match="newer"):
        await SqliteJobStore(path).open()


async def test_a_closed_store_refuses_at_once(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    await store.close()
    with pytest.raises(StoreClosed):
        await store.get("a")


async def test_a_job_is_counted_and_announced_as_soon_as_its_end_is_recorded(sqlite_store: SqliteJobStore,
                                                                             tmp_path: Path) -> None:
    """Whoever reads the job finished also finds it in the metrics, with its callback scheduled: nothing the
    finisher awaits after the store's write (removing the input file) may come first."""
    from kontext.jobs.finish import JobFinisher
    from kontext.media.files import ImageFiles
    from kontext.metrics import Metrics

    class SlowToForget(ImageFiles):
        async def remove_input(self, job_id: str) -> None:
            counted = metrics.registry.get_sample_value("kontext_jobs_finished_total", {"status": "failed"})
            seen_while_removing.append((counted, list(announced)))
            await super().remove_input(job_id)

    seen_while_removing: list[tuple[object, list[str]]] = []
    announced: list[str] = []
    metrics = Metrics()
    finisher = JobFinisher(sqlite_store, SlowToForget(tmp_path / "in", tmp_path / "out"), metrics,
                           lambda job: announced.append(job.id))
    await sqlite_store.insert(JobRecord(id="j", request=_request()))
    await finisher.fail(JobRecord(id="j", request=_request()), "refused")
    assert seen_while_removing == [(1.0, ["j"])]
