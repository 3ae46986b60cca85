"""The job record: what the store persists about one edit job."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Optional

from protocol import CallbackStatus, EditRequest, ImageSource, JobStatus


def request_digest(request: EditRequest) -> str:
    """SHA256 of the request as received, image bytes included: what makes a retry "the same request"."""
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()


def now() -> float:
    """Wall-clock time in epoch seconds; the store keeps every timestamp in this form."""
    return time.time()


@dataclass(frozen=True)
class JobRecord:
    """One job as persisted. ``request`` holds the validated request; the store leaves its
    ``image_b64`` out (the record built at submit still carries it): an uploaded image lives in the
    image store (files, or Redis) until the job ends.

    The callback secret is kept (the callback may have to be sent after a restart) but never
    leaves the process except as the webhook's own header.
    """

    id: str
    request: EditRequest
    status: JobStatus = JobStatus.QUEUED
    priority: float = 0.0
    image_source: Optional[ImageSource] = None
    queued_at: float = field(default_factory=now)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    error: Optional[str] = None
    result_sha256: Optional[str] = None
    result_pixels_sha256: Optional[str] = None
    result_width: Optional[int] = None
    result_height: Optional[int] = None
    recipe: Optional[str] = None
    attempts: int = 0
    """How often a worker started it."""
    store_retries: int = 0
    """Of those runs, how many ended because the store refused a write (the job was retried): not crashes."""
    worker: Optional[str] = None
    """The worker that ran (or runs) it."""
    callback_status: CallbackStatus = CallbackStatus.PENDING
    callback_status_code: Optional[int] = None
    callback_attempted_at: Optional[float] = None
    callback_error: Optional[str] = None
    callback_payload_status: Optional[JobStatus] = None
    swept_at: Optional[float] = None
    request_digest: Optional[str] = None
    """SHA256 of the request as received (image bytes included): a retry of the same request under the same
    ``job_id`` is recognised (``EditService.submit`` answers it as the first time)."""

    def callback_not_before(self, delay_seconds: float) -> Optional[float]:
        """The earliest time its callback may be sent (CALLBACK_NOT_BEFORE_SECONDS after arrival), or None."""
        if delay_seconds <= 0 or not self.request.callback_url:
            return None
        return self.queued_at + delay_seconds

    @property
    def run_seconds(self) -> Optional[float]:
        """Start to finish (or to now, while it runs); None before it starts."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.status.finished and self.finished_at is not None else now()
        return max(0.0, end - self.started_at)

    def cut_off_too_often(self, max_attempts: int) -> Optional[str]:
        """Why a job found ``processing`` by a new owner (a restart, a lease taken over) must not run again:
        its runs cut off by a stopped process (its starts, less those the store's refusals ended)."""
        interrupted = self.attempts - self.store_retries
        if self.status is JobStatus.PROCESSING and interrupted >= max_attempts:
            return (f"job was interrupted {interrupted} time(s) while running (the miner or worker process "
                    "stopped); not run again")
        return None

    def evolve(self, **changes: object) -> "JobRecord":
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: what ``JobStore.mark_finished`` writes, and nothing else."""

    status: JobStatus
    finished_at: float
    error: Optional[str] = None
    result_sha256: Optional[str] = None
    result_pixels_sha256: Optional[str] = None
    result_width: Optional[int] = None
    result_height: Optional[int] = None
    recipe: Optional[str] = None
