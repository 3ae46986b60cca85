"""The ``JobStore`` in one SQLite file, for one host.

Every operation is one transaction (``BEGIN IMMEDIATE ... COMMIT``, ``ROLLBACK`` on any error), and
operations run one at a time on the store's own thread, so coroutines never interleave inside a
transaction. Each write touches only the columns its operation owns. Whatever SQLite refuses (a full disk,
a read-only or corrupt file) is ``StorageUnavailable``; a duplicate id is ``JobConflict``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from kontext.errors import JobConflict, StorageUnavailable
from kontext.jobs.migrations import check_library, migrate
from kontext.jobs.record import JobOutcome, JobRecord, now
from kontext.jobs.rows import COLUMNS, callback_columns, from_row, outcome_columns, started_columns, to_row
from protocol import CallbackRecord, CallbackStatus, ImageSource, JobStatus

T = TypeVar("T")


class StoreClosed(RuntimeError):
    """An operation after ``close()``: a bug in the shutdown order, never a caller's fault."""


class SqliteJobStore:
    """Implements ``kontext.jobs.store.JobStore``: jobs in one SQLite file (WAL, synchronous=FULL: an
    acknowledged job survives kill -9)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: Optional[sqlite3.Connection] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        check_library()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"the job database's folder cannot be made ({exc.strerror or exc})") from exc
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")

        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA busy_timeout=5000")
                migrate(db)
            except BaseException:
                db.close()
                raise
            return db

        try:
            self._db = await self._call(connect, "opened")
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._db is None or self._executor is None:
            return
        db, executor = self._db, self._executor
        self._db = None  # later calls fail fast with StoreClosed
        await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=True)
        self._executor = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreClosed("job store is not open")
        return self._db

    async def _call(self, fn: Callable[[], T], doing: str) -> T:
        """Run ``fn`` on the store's thread. What SQLite refuses (``sqlite3.DatabaseError``: a full disk, a
        read-only or corrupt file, an I/O error) becomes ``StorageUnavailable`` (a 503, as Redis away is);
        a ``ProgrammingError`` is a bug in this module, and stays one."""
        if self._executor is None:
            raise StoreClosed("job store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.DatabaseError as exc:
            raise StorageUnavailable(f"the job database cannot be {doing} ({exc})") from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self.db
        return await self._call(lambda: fn(db), "read")

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` as one serialised transaction: all of it is committed, or none of it."""
        db = self.db

        def transaction() -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                if db.in_transaction:  # SQLite ends some failed transactions itself (a full disk, I/O errors)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self._call(transaction, "written")

    # -- writes ---------------------------------------------------------------------------

    async def insert(self, job: JobRecord) -> None:
        values = to_row(job)

        def insert(db: sqlite3.Connection) -> bool:
            try:
                db.execute(
                    f"INSERT INTO jobs (seq, {', '.join(COLUMNS)}) "
                    f"VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), {', '.join('?' for _ in COLUMNS)})",
                    [values[c] for c in COLUMNS],
                )
            except sqlite3.IntegrityError:  # the id is taken (the statement wrote nothing)
                return False
            return True

        if not await self._write(insert):
            raise JobConflict(f"job_id {job.id!r} already exists",
                              fields=[{"field": "job_id", "message": "already exists"}])

    async def delete(self, job_id: str) -> None:
        await self._write(lambda db: db.execute("DELETE FROM jobs WHERE id = ? AND status = ?",
                                                (job_id, JobStatus.QUEUED.value)))

    async def mark_started(self, job_id: str, *, started_at: float, attempts: int, worker: str) -> bool:
        return await self._update(job_id, started_columns(started_at=started_at, attempts=attempts, worker=worker),
                                  unfinished_only=True)

    async def set_image_source(self, job_id: str, source: ImageSource) -> None:
        await self._update(job_id, {"image_source": source.value})

    async def count_store_retry(self, job_id: str) -> None:
        await self._write(lambda db: db.execute("UPDATE jobs SET store_retries = store_retries + 1 WHERE id = ?",
                                                (job_id,)))

    async def mark_finished(self, job_id: str, outcome: JobOutcome) -> bool:
        return await self._update(job_id, outcome_columns(outcome), unfinished_only=True)

    async def claim_callback(self, job_id: str) -> bool:
        def claim(db: sqlite3.Connection) -> bool:
            cursor = db.execute("UPDATE jobs SET callback_status = ?, callback_attempted_at = ? "
                                "WHERE id = ? AND callback_status = ?",
                                (CallbackStatus.SENDING.value, now(), job_id, CallbackStatus.PENDING.value))
            return cursor.rowcount == 1

        return await self._write(claim)

    async def set_callback(self, job_id: str, record: CallbackRecord) -> None:
        await self._update(job_id, callback_columns(record))

    async def fail_interrupted_callbacks(self, error: str, attempted_at: float,
                                         claimed_before: Optional[float] = None) -> list[str]:
        """One process owns this file, so at its start every ``sending`` callback was cut off."""
        def fail(db: sqlite3.Connection) -> list[str]:
            ids = [row["id"] for row in db.execute("SELECT id FROM jobs WHERE callback_status = ?",
                                                   (CallbackStatus.SENDING.value,))]
            db.executemany(
                "UPDATE jobs SET callback_status = ?, callback_error = ?, callback_attempted_at = "
                "COALESCE(callback_attempted_at, ?), callback_payload_status = status WHERE id = ?",
                [(CallbackStatus.FAILED.value, error, attempted_at, job_id) for job_id in ids])
            return ids

        return await self._write(fail)

    async def expire_finished_before(self, cutoff: float, swept_at: float) -> list[str]:
        def expire(db: sqlite3.Connection) -> list[str]:
            ids = [row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE swept_at IS NULL AND finished_at IS NOT NULL AND finished_at < ?",
                (cutoff,))]
            db.executemany("UPDATE jobs SET swept_at = ?, request = NULL WHERE id = ?",
                           [(swept_at, job_id) for job_id in ids])
            return ids

        return await self._write(expire)

    async def forget_swept_before(self, cutoff: float) -> int:
        return await self._write(lambda db: db.execute(
            "DELETE FROM jobs WHERE swept_at IS NOT NULL AND swept_at < ?", (cutoff,)).rowcount)

    async def _update(self, job_id: str, columns: dict[str, Any], *, unfinished_only: bool = False) -> bool:
        """Write ``columns`` of one job; with ``unfinished_only``, only while it is queued or processing.
        True when the row was written."""
        assignments = ", ".join(f"{name} = ?" for name in columns)
        where, params = "id = ?", [job_id]
        if unfinished_only:
            where += " AND status IN (?, ?)"
            params += [JobStatus.QUEUED.value, JobStatus.PROCESSING.value]
        return await self._write(lambda db: db.execute(f"UPDATE jobs SET {assignments} WHERE {where}",
                                                       [*columns.values(), *params]).rowcount == 1)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Optional[JobRecord]:
        row = await self._read(lambda db: db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return None if row is None else from_row(row)

    async def unfinished(self) -> list[JobRecord]:
        return await self._select(
            "SELECT * FROM jobs WHERE status IN (?, ?) AND swept_at IS NULL ORDER BY seq",
            (JobStatus.QUEUED.value, JobStatus.PROCESSING.value),
        )

    async def pending_callbacks(self) -> list[JobRecord]:
        return await self._select(
            "SELECT * FROM jobs WHERE status IN (?, ?) AND callback_status = ? AND swept_at IS NULL ORDER BY seq",
            (JobStatus.COMPLETED.value, JobStatus.FAILED.value, CallbackStatus.PENDING.value),
        )

    async def count_by_status(self) -> dict[str, int]:
        rows = await self._read(lambda db: db.execute(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE swept_at IS NULL GROUP BY status").fetchall())
        return {row["status"]: row["n"] for row in rows}

    async def _select(self, sql: str, params: tuple[Any, ...]) -> list[JobRecord]:
        rows = await self._read(lambda db: db.execute(sql, params).fetchall())
        return [from_row(row) for row in rows]
