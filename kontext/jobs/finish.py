"""How a job ends, recorded once: the store, metrics and the log, whoever listens, then the input file."""

from __future__ import annotations

import logging
from typing import Any, Callable

from kontext.jobs.record import JobOutcome, JobRecord, now
from kontext.jobs.store import JobStore
from kontext.media.files import ImageStore
from kontext.metrics import Metrics
from protocol import JobStatus

log = logging.getLogger(__name__)

ERROR_MAX_CHARS = 500


class JobFinisher:
    """Used by every worker and by the input prefetcher; ``on_finished`` sends the callback and wakes
    ``/sync/edit`` waiters."""

    def __init__(self, store: JobStore, files: ImageStore, metrics: Metrics,
                 on_finished: Callable[[JobRecord], None]) -> None:
        self.store = store
        self.files = files
        self.metrics = metrics
        self.on_finished = on_finished

    async def complete(self, job: JobRecord, output: Any) -> JobRecord:
        """``output`` is the engine's ``EditOutput``, its PNG already stored; ``job.worker`` ran it."""
        self.metrics.edit_seconds.labels(job.worker or "").observe(output.seconds)
        return await self._end(job, JobOutcome(
            status=JobStatus.COMPLETED, finished_at=now(), result_sha256=output.sha256,
            result_pixels_sha256=output.pixels_sha256, result_width=output.width, result_height=output.height,
            recipe=output.recipe))

    async def fail(self, job: JobRecord, error: str) -> JobRecord:
        return await self._end(job, JobOutcome(status=JobStatus.FAILED, finished_at=now(), error=short(error),
                                               recipe=job.recipe))

    async def _end(self, job: JobRecord, outcome: JobOutcome) -> JobRecord:
        if not await self.store.mark_finished(job.id, outcome):
            # Another worker finished it first (a shared queue took the job over from this one, whose lease
            # had lapsed): a job ends once, with one callback; this run's outcome is dropped.
            log.warning("job %s had already finished elsewhere; this run's %s is dropped", job.id,
                        outcome.status.value)
            return await self.store.get(job.id) or job
        job = job.evolve(**vars(outcome))
        # Counted and announced at once, with nothing awaited since the store recorded the end: whoever reads
        # the job finished also reads the metrics counting it, and its callback is already on its way.
        self.metrics.jobs_finished.labels(job.status.value).inc()
        if job.worker is not None:
            self.metrics.jobs_run.labels(job.worker, job.status.value).inc()
        self.metrics.job_seconds.observe(outcome.finished_at - job.queued_at)
        log.info("job %s %s in %.0f ms%s", job.id, job.status.value, (job.run_seconds or 0.0) * 1000,
                 f": {job.error}" if job.error else "")
        self.on_finished(job)
        await self.files.remove_input(job.id)  # (kept until the end was recorded: a restart needs it)
        return job


def short(text: str) -> str:
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"
