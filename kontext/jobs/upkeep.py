"""Keeping the store and the queue in step over time: recovery at start, orphans of a shared queue, retention."""

from __future__ import annotations

import logging
from typing import Optional

from kontext.jobs.finish import JobFinisher
from kontext.jobs.inputs import InputPrefetcher, enqueue
from kontext.jobs.queue import RunQueue
from kontext.jobs.record import JobRecord, now
from kontext.jobs.store import JobStore
from kontext.media.files import ImageStore
from kontext.settings import Settings
from protocol import ImageSource, JobStatus

log = logging.getLogger(__name__)

ORPHAN_AFTER_SECONDS = 60.0
"""A stored job with no queue entry this long after it arrived was never queued (``requeue_orphans``)."""
TOMBSTONE_DAYS = 7
"""How long a swept job still answers 410 (then 404)."""


async def never_accepted(job: JobRecord, files: ImageStore) -> bool:
    """A record whose submit never completed: its id was claimed, then the process stopped before the uploaded image
    was stored (so its caller got no answer, and will send it again). It is not a job to run, or to fail."""
    return (job.status is JobStatus.QUEUED and job.attempts == 0
            and job.image_source in (ImageSource.BASE64, ImageSource.BASE64_FALLBACK)
            and not await files.has_input(job.id))


class Upkeep:
    """What the runtime runs at start (``recover``) and on timers (``sweep``; a shared queue's ``requeue_orphans``)."""

    def __init__(self, settings: Settings, store: JobStore, queue: RunQueue, files: ImageStore, *,
                 finisher: Optional[JobFinisher] = None, prefetcher: Optional[InputPrefetcher] = None) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.files = files
        self.finisher = finisher
        self.prefetcher = prefetcher

    async def recover(self) -> int:
        """Queue again every job a previous process accepted but did not finish.

        A job found ``processing`` was cut off by the process stopping; one cut off ``MAX_ATTEMPTS``
        times is failed with that reason instead, so a job that kills the process cannot loop forever.
        """
        jobs = await self.store.unfinished()
        for job in jobs:
            if await never_accepted(job, self.files):
                await self._forget(job)
                continue
            reason = job.cut_off_too_often(self.settings.max_attempts)
            if reason is not None and self.finisher is not None:
                await self.finisher.fail(job, reason)
                continue
            await enqueue(job, self.queue, self.files, self.prefetcher)
        if jobs:
            log.warning("recovered %d unfinished job(s) from the store", len(jobs))
        return len(jobs)

    async def requeue_orphans(self, open_entries: set[str]) -> list[str]:
        """A shared queue's doors: queue again every unfinished job with no open entry (``open_entries``),
        older than ORPHAN_AFTER_SECONDS: its door stopped between storing and queueing it, or Redis lost
        the queue. (One host rebuilds its queue from the store at start instead: ``recover``.)"""
        cutoff = now() - ORPHAN_AFTER_SECONDS
        orphans = [job for job in await self.store.unfinished()
                   if job.id not in open_entries and job.queued_at < cutoff]
        for job in orphans:
            if await never_accepted(job, self.files):
                await self._forget(job)
                continue
            await self.queue.put(job.id, job.priority, steps=job.request.num_inference_steps)
        if orphans:
            log.warning("queued again %d job(s) that had no queue entry: %s", len(orphans),
                        ", ".join(job.id for job in orphans))
        return [job.id for job in orphans]

    async def _forget(self, job: JobRecord) -> None:
        log.warning("job %s was claimed but its image never stored (the process stopped mid-submit, unanswered): "
                    "forgotten, so the caller's retry is a new submit", job.id)
        await self.store.delete(job.id)

    async def sweep(self) -> list[str]:
        """Remove records and files older than the retention period (tombstones answer 410), and files no
        live job owns (a crash between writing a file and recording it) once they are as old."""
        clock = now()
        cutoff = clock - self.settings.retention_hours * 3600
        expired = await self.store.expire_finished_before(cutoff, clock)
        for job_id in expired:
            await self.files.remove_all(job_id)
        orphans = []
        for job_id in await self.files.older_than(cutoff):
            owner = await self.store.get(job_id)
            if owner is None or owner.swept_at is not None:
                await self.files.remove_all(job_id)
                orphans.append(job_id)
        await self.store.forget_swept_before(clock - TOMBSTONE_DAYS * 86400)
        if expired or orphans:
            log.info("retention sweep removed %d job(s) and %d orphaned file set(s)", len(expired), len(orphans))
        return expired + orphans
