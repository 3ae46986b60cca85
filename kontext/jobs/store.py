"""Persistent job store: the ``JobStore`` interface and its SQLite implementation.

Every operation is one transaction (``BEGIN IMMEDIATE ... COMMIT``, ``ROLLBACK`` on any error), and
operations run one at a time on the store's own thread, so coroutines never interleave inside a
transaction. Each write touches only the columns its operation owns.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, TypeVar

from kontext.errors import JobConflict, StorageUnavailable
from kontext.jobs.migrations import migrate
from kontext.jobs.record import JobOutcome, JobRecord, now
from protocol import CallbackRecord, CallbackStatus, EditRequest, ImageSource, JobStatus

T = TypeVar("T")

COLUMNS = (
    "id", "status", "priority", "request", "image_source", "queued_at", "started_at", "finished_at", "error",
    "result_sha256", "result_pixels_sha256", "result_width", "result_height", "recipe", "attempts", "store_retries",
    "worker",
    "callback_status", "callback_status_code", "callback_attempted_at", "callback_error", "callback_payload_status",
    "swept_at",
)


_FLOATS = frozenset({"priority", "queued_at", "started_at", "finished_at", "callback_attempted_at", "swept_at"})
_INTS = frozenset({"seq", "attempts", "store_retries", "result_width", "result_height", "callback_status_code"})


def typed_column(name: str, text: str) -> Any:
    """A column's value from its text form (how Redis keeps it)."""
    if name in _FLOATS:
        return float(text)
    if name in _INTS:
        return int(text)
    return text


class JobStore(Protocol):
    """What the service, worker and notifier need from persistence; each backend implements all of it."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def insert(self, job: JobRecord) -> None: ...
    async def get(self, job_id: str) -> Optional[JobRecord]: ...
    async def delete(self, job_id: str) -> None:
        """Remove a job that was never queued (its submit failed after the insert)."""
        ...
    async def mark_started(self, job_id: str, *, started_at: float, attempts: int, worker: str) -> bool:
        """False, and nothing written, when the job has finished already (another worker ran it)."""
        ...
    async def set_image_source(self, job_id: str, source: ImageSource) -> None: ...
    async def count_store_retry(self, job_id: str) -> None:
        """One more run of the job ended by a write the store refused (see ``JobRecord.store_retries``)."""
        ...
    async def mark_finished(self, job_id: str, outcome: JobOutcome) -> bool:
        """False, and nothing written, when the job has finished already: a job ends once."""
        ...
    async def claim_callback(self, job_id: str) -> bool: ...
    async def set_callback(self, job_id: str, record: CallbackRecord) -> None: ...
    async def fail_interrupted_callbacks(self, error: str, attempted_at: float,
                                         claimed_before: Optional[float] = None) -> list[str]: ...
    async def unfinished(self) -> list[JobRecord]: ...
    async def pending_callbacks(self) -> list[JobRecord]: ...
    async def expire_finished_before(self, cutoff: float, swept_at: float) -> list[str]: ...
    async def forget_swept_before(self, cutoff: float) -> int: ...
    async def count_by_status(self) -> dict[str, int]: ...


class StoreClosed(RuntimeError):
    """An operation after ``close()``: a bug in the shutdown order, never a caller's fault."""


class SqliteJobStore:
    """Jobs in one SQLite file (WAL, synchronous=FULL: an acknowledged job survives kill -9)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: Optional[sqlite3.Connection] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")

        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            migrate(db)
            return db

        self._db = await self._call(connect)

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

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreClosed("job store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self.db
        return await self._call(lambda: fn(db))

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

        try:
            return await self._call(transaction)
        except sqlite3.OperationalError as exc:  # a full disk, a read-only file: as Redis away is, a 503
            raise StorageUnavailable(f"the job database cannot be written ({exc})") from exc

    # -- writes ---------------------------------------------------------------------------

    async def insert(self, job: JobRecord) -> None:
        values = to_row(job)

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO jobs (seq, {', '.join(COLUMNS)}) "
                f"VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), {', '.join('?' for _ in COLUMNS)})",
                [values[c] for c in COLUMNS],
            )

        try:
            await self._write(insert)
        except sqlite3.IntegrityError:
            raise JobConflict(f"job_id {job.id!r} already exists",
                              fields=[{"field": "job_id", "message": "already exists"}]) from None

    async def delete(self, job_id: str) -> None:
        await self._write(lambda db: db.execute("DELETE FROM jobs WHERE id = ? AND status = ?",
                                                (job_id, JobStatus.QUEUED.value)))

    async def mark_started(self, job_id: str, *, started_at: float, attempts: int, worker: str) -> bool:
        return await self._update(job_id, unfinished_only=True, status=JobStatus.PROCESSING.value,
                                  started_at=started_at, attempts=attempts, worker=worker)

    async def set_image_source(self, job_id: str, source: ImageSource) -> None:
        await self._update(job_id, image_source=source.value)

    async def count_store_retry(self, job_id: str) -> None:
        await self._write(lambda db: db.execute("UPDATE jobs SET store_retries = store_retries + 1 WHERE id = ?",
                                                (job_id,)))

    async def mark_finished(self, job_id: str, outcome: JobOutcome) -> bool:
        return await self._update(
            job_id, unfinished_only=True, status=outcome.status.value, finished_at=outcome.finished_at,
            error=outcome.error, result_sha256=outcome.result_sha256, result_pixels_sha256=outcome.result_pixels_sha256,
            result_width=outcome.result_width, result_height=outcome.result_height, recipe=outcome.recipe,
        )

    async def claim_callback(self, job_id: str) -> bool:
        """pending -> sending, before the one POST (its time recorded); False if it is not pending (someone
        else has it)."""
        def claim(db: sqlite3.Connection) -> bool:
            cursor = db.execute("UPDATE jobs SET callback_status = ?, callback_attempted_at = ? "
                                "WHERE id = ? AND callback_status = ?",
                                (CallbackStatus.SENDING.value, now(), job_id, CallbackStatus.PENDING.value))
            return cursor.rowcount == 1

        return await self._write(claim)

    async def set_callback(self, job_id: str, record: CallbackRecord) -> None:
        await self._update(
            job_id, callback_status=record.status.value, callback_status_code=record.status_code,
            callback_attempted_at=record.attempted_at.timestamp() if record.attempted_at else None,
            callback_error=record.error,
            callback_payload_status=record.payload_status.value if record.payload_status else None,
        )

    async def fail_interrupted_callbacks(self, error: str, attempted_at: float,
                                         claimed_before: Optional[float] = None) -> list[str]:
        """Callbacks left ``sending`` by a process that stopped mid-POST become ``failed`` (at most once).
        One process owns this file, so at its start every ``sending`` callback was cut off."""
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
        """Mark finished jobs older than ``cutoff`` as swept and drop their request data.

        The row stays as a tombstone so status can answer 410 rather than 404.
        """
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

    async def _update(self, job_id: str, *, unfinished_only: bool = False, **columns: Any) -> bool:
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


def to_row(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status.value,
        "priority": job.priority,
        "request": None if job.swept_at else job.request.model_dump_json(exclude={"image_b64"}),
        "image_source": job.image_source.value if job.image_source else None,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "error": job.error,
        "result_sha256": job.result_sha256,
        "result_pixels_sha256": job.result_pixels_sha256,
        "result_width": job.result_width,
        "result_height": job.result_height,
        "recipe": job.recipe,
        "attempts": job.attempts,
        "store_retries": job.store_retries,
        "worker": job.worker,
        "callback_status": job.callback_status.value,
        "callback_status_code": job.callback_status_code,
        "callback_attempted_at": job.callback_attempted_at,
        "callback_error": job.callback_error,
        "callback_payload_status": job.callback_payload_status.value if job.callback_payload_status else None,
        "swept_at": job.swept_at,
    }


def from_row(row: Mapping[str, Any]) -> JobRecord:
    request_json = row["request"]
    request = (
        EditRequest.model_validate_json(request_json)
        if request_json
        else EditRequest.model_construct(prompt="", seed=0)
    )
    return JobRecord(
        id=row["id"],
        request=request,
        status=JobStatus(row["status"]),
        priority=row["priority"],
        image_source=ImageSource(row["image_source"]) if row["image_source"] else None,
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        result_sha256=row["result_sha256"],
        result_pixels_sha256=row["result_pixels_sha256"],
        result_width=row["result_width"],
        result_height=row["result_height"],
        recipe=row["recipe"],
        attempts=row["attempts"],
        store_retries=row["store_retries"] or 0,
        worker=row["worker"],
        callback_status=CallbackStatus(row["callback_status"]),
        callback_status_code=row["callback_status_code"],
        callback_attempted_at=row["callback_attempted_at"],
        callback_error=row["callback_error"],
        callback_payload_status=(
            JobStatus(row["callback_payload_status"]) if row["callback_payload_status"] else None
        ),
        swept_at=row["swept_at"],
    )
