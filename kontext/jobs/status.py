"""A job's status record (``GET /edit/status``): the stored job, its place and its progress, in the seed's shape."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from kontext.delivery.guard import without_credentials
from kontext.engine.recipes import ignored_fields
from kontext.jobs.record import JobRecord, now
from kontext.settings import Settings
from protocol import (
    CallbackPending,
    CallbackRecord,
    CallbackStatus,
    JobStatus,
    Progress,
    RequestSummary,
    StatusRecord,
)


def result_url(job_id: str) -> str:
    return f"/edit/result/{job_id}"


def status_record(job: JobRecord, settings: Settings, *, queue_position: Optional[int] = None,
                  progress: Optional[tuple[int, int]] = None) -> StatusRecord:
    """``progress``: (step, total) of a job on a device. A finished job never shows one, whatever a worker (or its
    last heartbeat, on a shared queue) still says."""
    request = job.request
    completed = job.status is JobStatus.COMPLETED
    current = None if job.status.finished else progress
    return StatusRecord(
        id=job.id,
        status=job.status,
        queued_at=datetime.fromtimestamp(job.queued_at, tz=timezone.utc),
        started_at=_dt(job.started_at),
        completed_at=_dt(job.finished_at) if completed else None,
        failed_at=_dt(job.finished_at) if job.status is JobStatus.FAILED else None,
        error=job.error,
        result_url=result_url(job.id),
        image_url=settings.image_url(job.id) if completed else None,
        result_sha256=job.result_sha256,
        result_pixels_sha256=job.result_pixels_sha256,
        result_width=job.result_width,
        result_height=job.result_height,
        recipe=job.recipe,
        ignored_fields=ignored_fields(job.recipe, request.width),
        attempts=job.attempts,
        worker=job.worker,
        queue_position=queue_position,
        progress=Progress(step=current[0], total=current[1]) if current else None,
        queued_ms=_ms((job.started_at or job.finished_at or now()) - job.queued_at),
        run_ms=None if job.run_seconds is None else _ms(job.run_seconds),
        request=RequestSummary(
            **request.model_dump(include=set(RequestSummary.model_fields) - {"image_source", "callback_url"}),
            callback_url=without_credentials(request.callback_url),
            image_source=job.image_source,
        ),
        **_callback_fields(job, settings),
    )


def _callback_fields(job: JobRecord, settings: Settings) -> dict[str, Any]:
    """``callback`` once the outcome is known, else ``callback_pending`` (the seed's clients read the former's
    presence as "the outcome is known")."""
    if job.callback_status in (CallbackStatus.PENDING, CallbackStatus.SENDING):
        not_before = job.callback_not_before(settings.callback_not_before_seconds)
        return {"callback_pending": CallbackPending(
            state="sending" if job.callback_status is CallbackStatus.SENDING else "waiting",
            not_before=_dt(not_before))}
    return {"callback": CallbackRecord(
        status=job.callback_status, status_code=job.callback_status_code,
        attempted_at=_dt(job.callback_attempted_at), payload_status=job.callback_payload_status,
        error=job.callback_error)}


def _dt(epoch: Optional[float]) -> Optional[datetime]:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


def _ms(seconds: float) -> int:
    return max(0, int(round(seconds * 1000)))
