"""SQLite job store: round trips, conflicts, recovery queries, tombstones, durability across reopen."""

from datetime import datetime, timezone
from pathlib import Path

import pytest

from kontext.errors import JobConflict
from kontext.jobs.record import JobRecord
from kontext.jobs.store import SqliteJobStore
from protocol import CallbackRecord, CallbackStatus, EditRequest, ImageSource, JobStatus


def _request(**extra: object) -> EditRequest:
    return EditRequest.model_validate({"prompt": "hat", "seed": 7, "image_b64": "QUJD", **extra})


@pytest.fixture
async def store(tmp_path: Path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    yield store
    await store.close()


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
    b = await store.get("b")
    await store.save(b.evolve(status=JobStatus.PROCESSING, attempts=1))
    c = await store.get("c")
    await store.save(c.evolve(status=JobStatus.COMPLETED, finished_at=100.0))
    assert [j.id for j in await store.unfinished()] == ["a", "b"]
    assert [j.id for j in await store.pending_callbacks()] == ["c"]
    await store.set_callback("c", CallbackRecord(status=CallbackStatus.DELIVERED, status_code=204,
                                                 attempted_at=datetime.now(timezone.utc),
                                                 payload_status=JobStatus.COMPLETED))
    assert await store.pending_callbacks() == []
    loaded = await store.get("c")
    assert loaded.callback_status is CallbackStatus.DELIVERED and loaded.callback_status_code == 204
    assert await store.count_by_status() == {"queued": 1, "processing": 1, "completed": 1}


async def test_sweep_leaves_a_tombstone_then_forgets(store: SqliteJobStore) -> None:
    await store.insert(JobRecord(id="old", request=_request()))
    await store.save((await store.get("old")).evolve(status=JobStatus.COMPLETED, finished_at=10.0))
    await store.insert(JobRecord(id="new", request=_request()))
    await store.save((await store.get("new")).evolve(status=JobStatus.COMPLETED, finished_at=1000.0))
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
