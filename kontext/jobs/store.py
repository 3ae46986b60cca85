"""The ``JobStore`` interface: what the service, worker and notifier need from persistence.

Two backends implement all of it, with one contract (``tests/unit/contracts``): ``SqliteJobStore`` (one
host, ``kontext.jobs.sqlite_store``) and ``RedisJobStore`` (many hosts, ``kontext.jobs.redis_store``). Each
raises ``kontext.errors.StorageUnavailable`` when its storage fails (and ``JobConflict`` for a duplicate id),
never its library's own errors.
"""

from __future__ import annotations

from typing import Optional, Protocol

from kontext.jobs.record import JobOutcome, JobRecord
from kontext.jobs.sqlite_store import SqliteJobStore, StoreClosed
from protocol import CallbackRecord, ImageSource

__all__ = ["JobStore", "SqliteJobStore", "StoreClosed"]


class JobStore(Protocol):
    """Each write touches only the columns its operation owns, and writes nothing for a job that is not
    there (never sent, deleted, or forgotten after its retention)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def insert(self, job: JobRecord) -> None:
        """``JobConflict`` when the id is taken."""
        ...
    async def get(self, job_id: str) -> Optional[JobRecord]: ...
    async def delete(self, job_id: str) -> None:
        """Remove a job that was never queued (its submit failed after the insert); only while it is queued."""
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
    async def claim_callback(self, job_id: str) -> bool:
        """pending -> sending, before the one POST (its time recorded); False if it is not pending."""
        ...
    async def set_callback(self, job_id: str, record: CallbackRecord) -> None: ...
    async def fail_interrupted_callbacks(self, error: str, attempted_at: float,
                                         claimed_before: Optional[float] = None) -> list[str]:
        """Callbacks left ``sending`` by a process that stopped mid-POST become ``failed`` (at most once)."""
        ...
    async def unfinished(self) -> list[JobRecord]: ...
    async def pending_callbacks(self) -> list[JobRecord]: ...
    async def expire_finished_before(self, cutoff: float, swept_at: float) -> list[str]:
        """Mark finished jobs older than ``cutoff`` as swept and drop their request (a tombstone stays)."""
        ...
    async def forget_swept_before(self, cutoff: float) -> int: ...
    async def count_by_status(self) -> dict[str, int]: ...
