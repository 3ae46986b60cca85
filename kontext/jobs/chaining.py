"""Chaining: which image a job edits when it names a ``reference_job_id``, decided here and only here.

At submit: a usable reference (known, not expired, not failed, with its result stored if it
completed) is the source, and a job chained to an unfinished reference gets at most its priority,
so it never overtakes it; otherwise ``image_b64``, then ``image_url``, is the fallback; with neither,
the request is refused. At run time: a reference still running means "wait"; one that failed or
vanished since falls back the same way, or fails the job with a message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kontext.errors import InvalidRequest
from kontext.jobs.record import JobRecord
from kontext.media.files import ImageStore
from protocol import EditRequest, ImageSource, JobStatus

URL_SOURCES = frozenset({ImageSource.URL, ImageSource.URL_FALLBACK})
"""Sources whose bytes are downloaded (into the job's input file) before the job can run."""


class ChainBroken(Exception):
    """The reference did not give a result and the request has no fallback; the message says so."""


@dataclass(frozen=True)
class RunInput:
    """What a worker edits: the reference's result (``data``), a stored input (``source``), or nothing yet."""

    source: ImageSource
    data: Optional[bytes] = None
    wait_for: Optional[str] = None
    """The reference is still queued or running: run this job after it."""


def fallback_source(request: EditRequest) -> Optional[ImageSource]:
    if request.image_b64 is not None:
        return ImageSource.BASE64_FALLBACK
    if request.image_url is not None:
        return ImageSource.URL_FALLBACK
    return None


async def reference_problem(reference: Optional[JobRecord], files: ImageStore) -> Optional[str]:
    """Why ``reference`` cannot give this job its image, or None if it can (now or once it finishes)."""
    if reference is None:
        return "is unknown"
    if reference.swept_at is not None:
        return "has expired (results are kept for the retention period)"
    if reference.status is JobStatus.FAILED:
        return "failed"
    if reference.status is JobStatus.COMPLETED and not await files.has_result(reference.id):
        return "has no stored result"
    return None


async def source_at_submit(request: EditRequest, reference: Optional[JobRecord], files: ImageStore,
                           priority: float) -> tuple[ImageSource, float]:
    """The job's source and priority; ``InvalidRequest`` (400) when nothing usable is left."""
    if request.reference_job_id is None:
        return (ImageSource.BASE64 if request.image_b64 is not None else ImageSource.URL), priority
    problem = await reference_problem(reference, files)
    if problem is None:
        assert reference is not None
        if not reference.status.finished:
            priority = min(priority, reference.priority)
        return ImageSource.REFERENCE_EDIT, priority
    fallback = fallback_source(request)
    if fallback is not None:
        return fallback, priority
    raise InvalidRequest(
        f"reference_job_id {request.reference_job_id!r} {problem}, and no image_b64 or image_url fallback was given",
        fields=[{"field": "reference_job_id", "message": problem}],
    )


async def input_at_run(job: JobRecord, reference: Optional[JobRecord], files: ImageStore) -> RunInput:
    """For a ``reference_edit`` job when a worker takes it: the reference's PNG, a wait, or the fallback."""
    reference_id = job.request.reference_job_id or ""
    if reference is not None and reference.swept_at is None:
        if reference.status is JobStatus.COMPLETED:
            data = await files.read_result(reference_id)
            if data is not None:
                return RunInput(ImageSource.REFERENCE_EDIT, data=data)
        elif not reference.status.finished:
            return RunInput(ImageSource.REFERENCE_EDIT, wait_for=reference_id)
    if await files.has_input(job.id):  # only an image_b64 is stored at submit for a chained job (never a URL's)
        return RunInput(ImageSource.BASE64_FALLBACK)
    fallback = fallback_source(job.request)
    if fallback is ImageSource.URL_FALLBACK:
        return RunInput(fallback)
    problem = await reference_problem(reference, files) or "did not complete"
    raise ChainBroken(f"reference_job_id {reference_id} {problem}, and no fallback image was given")
