"""Persistent job store: the ``JobStore`` interface and its SQLite implementation."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Optional, Protocol

import aiosqlite

from kontext.errors import JobConflict
from kontext.jobs.record import JobRecord
from protocol import CallbackRecord, CallbackStatus, EditRequest, ImageSource, JobStatus

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    priority REAL NOT NULL DEFAULT 0,
    request TEXT,
    image_source TEXT,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    result_sha256 TEXT,
    recipe TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_ms INTEGER,
    callback_status TEXT NOT NULL,
    callback_status_code INTEGER,
    callback_attempted_at REAL,
    callback_error TEXT,
    callback_payload_status TEXT,
    swept_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);
"""

_COLUMNS = (
    "id", "status", "priority", "request", "image_source", "queued_at", "started_at", "finished_at",
    "error", "result_sha256", "recipe", "attempts", "run_ms", "callback_status", "callback_status_code",
    "callback_attempted_at", "callback_error", "callback_payload_status", "swept_at",
)


class JobStore(Protocol):
    """What the service needs from persistence; another backend implements the same methods."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def insert(self, job: JobRecord) -> None: ...
    async def get(self, job_id: str) -> Optional[JobRecord]: ...
    async def save(self, job: JobRecord) -> None: ...
    async def set_callback(self, job_id: str, record: CallbackRecord) -> None: ...
    async def unfinished(self) -> list[JobRecord]: ...
    async def pending_callbacks(self) -> list[JobRecord]: ...
    async def expire_finished_before(self, cutoff: float, swept_at: float) -> list[str]: ...
    async def forget_swept_before(self, cutoff: float) -> int: ...
    async def count_by_status(self) -> dict[str, int]: ...


class SqliteJobStore:
    """Jobs in one SQLite file (WAL, synchronous=FULL: an acknowledged job survives kill -9).

    aiosqlite runs every statement on its own thread, so the event loop never blocks on disk.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: Optional[aiosqlite.Connection] = None

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path)
        self._db.row_factory = sqlite3.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.executescript(_SCHEMA)
        await self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("job store is not open")
        return self._db

    async def insert(self, job: JobRecord) -> None:
        values = _to_row(job)
        placeholders = ", ".join("?" for _ in _COLUMNS)
        try:
            await self.db.execute(
                f"INSERT INTO jobs (seq, {', '.join(_COLUMNS)}) "
                f"VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), {placeholders})",
                [values[c] for c in _COLUMNS],
            )
            await self.db.commit()
        except sqlite3.IntegrityError:
            await self.db.rollback()
            raise JobConflict(f"job_id {job.id!r} already exists", fields=[{"field": "job_id",
                              "message": "already exists"}]) from None

    async def get(self, job_id: str) -> Optional[JobRecord]:
        async with self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _from_row(row)

    async def save(self, job: JobRecord) -> None:
        values = _to_row(job)
        assignments = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
        await self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?", [values[c] for c in _COLUMNS[1:]] + [job.id]
        )
        await self.db.commit()

    async def set_callback(self, job_id: str, record: CallbackRecord) -> None:
        await self.db.execute(
            "UPDATE jobs SET callback_status = ?, callback_status_code = ?, callback_attempted_at = ?, "
            "callback_error = ?, callback_payload_status = ? WHERE id = ?",
            (
                record.status.value,
                record.status_code,
                record.attempted_at.timestamp() if record.attempted_at else None,
                record.error,
                record.payload_status.value if record.payload_status else None,
                job_id,
            ),
        )
        await self.db.commit()

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

    async def expire_finished_before(self, cutoff: float, swept_at: float) -> list[str]:
        """Mark finished jobs older than ``cutoff`` as swept and drop their request data.

        The row stays as a tombstone so status can answer 410 rather than 404.
        """
        async with self.db.execute(
            "SELECT id FROM jobs WHERE swept_at IS NULL AND finished_at IS NOT NULL AND finished_at < ?",
            (cutoff,),
        ) as cursor:
            ids = [row["id"] for row in await cursor.fetchall()]
        if ids:
            await self.db.executemany(
                "UPDATE jobs SET swept_at = ?, request = NULL WHERE id = ?", [(swept_at, i) for i in ids]
            )
            await self.db.commit()
        return ids

    async def forget_swept_before(self, cutoff: float) -> int:
        cursor = await self.db.execute("DELETE FROM jobs WHERE swept_at IS NOT NULL AND swept_at < ?", (cutoff,))
        await self.db.commit()
        return cursor.rowcount

    async def count_by_status(self) -> dict[str, int]:
        async with self.db.execute(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE swept_at IS NULL GROUP BY status"
        ) as cursor:
            return {row["status"]: row["n"] for row in await cursor.fetchall()}

    async def _select(self, sql: str, params: tuple[Any, ...]) -> list[JobRecord]:
        async with self.db.execute(sql, params) as cursor:
            return [_from_row(row) for row in await cursor.fetchall()]


def _to_row(job: JobRecord) -> dict[str, Any]:
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
        "recipe": job.recipe,
        "attempts": job.attempts,
        "run_ms": job.run_ms,
        "callback_status": job.callback_status.value,
        "callback_status_code": job.callback_status_code,
        "callback_attempted_at": job.callback_attempted_at,
        "callback_error": job.callback_error,
        "callback_payload_status": job.callback_payload_status.value if job.callback_payload_status else None,
        "swept_at": job.swept_at,
    }


def _from_row(row: sqlite3.Row) -> JobRecord:
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
        recipe=row["recipe"],
        attempts=row["attempts"],
        run_ms=row["run_ms"],
        callback_status=CallbackStatus(row["callback_status"]),
        callback_status_code=row["callback_status_code"],
        callback_attempted_at=row["callback_attempted_at"],
        callback_error=row["callback_error"],
        callback_payload_status=(
            JobStatus(row["callback_payload_status"]) if row["callback_payload_status"] else None
        ),
        swept_at=row["swept_at"],
    )
