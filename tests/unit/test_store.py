"""What only the SQLite job store has (the contract both stores share is ``tests/unit/contracts``): durability
across reopen, a failed transaction rolled back whole, a corrupt file or too old a library refused with the
reason, and migrations from the first release's schema."""

import sqlite3
from pathlib import Path

import pytest

from kontext.errors import StartupError, StorageUnavailable
from kontext.http.errors import answer
from kontext.jobs.migrations import LATEST
from kontext.jobs.record import JobOutcome, JobRecord
from kontext.jobs.store import SqliteJobStore, StoreClosed
from protocol import EditRequest, JobStatus


def _request(**extra: object) -> EditRequest:
    return EditRequest.model_validate({"prompt": "hat", "seed": 7, "image_b64": "QUJD", **extra})


@pytest.fixture
async def sqlite_store(tmp_path: Path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    yield store
    await store.close()


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


async def test_too_old_an_sqlite_library_is_refused_at_open_with_the_reason(tmp_path: Path, monkeypatch) -> None:
    """Migration 2 drops a column (SQLite 3.35): an older library failed halfway through migrating, with a
    syntax error."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    with pytest.raises(StartupError, match=r"^SQLite 3\.31\.1 is too old: the job store needs SQLite 3\.35\.0 "):
        await SqliteJobStore(tmp_path / "jobs.sqlite3").open()
    assert not (tmp_path / "jobs.sqlite3").exists()  # refused before anything was written


async def test_a_corrupt_database_file_is_storage_unavailable(tmp_path: Path) -> None:
    """"file is not a database" is a sqlite3.DatabaseError, not an OperationalError: it escaped unmapped."""
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"not a database, whatever its name says " * 200)
    store = SqliteJobStore(path)
    with pytest.raises(StorageUnavailable, match="file is not a database"):
        await store.open()
    await store.close()  # nothing was left open


async def test_a_corrupt_database_is_a_clear_startup_error(tmp_path: Path) -> None:
    from kontext.runtime import Runtime
    from tests.fakes import FakeEngine
    from tests.unit.test_sidecar import make_settings

    settings = make_settings(tmp_path)
    settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    settings.database_path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StartupError, match="not usable: the job database cannot be opened .file is not a database"):
        await Runtime(settings, engine=FakeEngine()).start()


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
