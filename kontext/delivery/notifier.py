"""Decides and records each finished job's one webhook: skipped, expired, delivered or failed."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Callable, Optional, Protocol

from kontext.media.files import ImageFiles
from kontext.jobs.record import JobRecord
from kontext.metrics import Metrics
from kontext.jobs.store import JobStore
from protocol import CallbackPayload, CallbackRecord, CallbackStatus, JobStatus

log = logging.getLogger(__name__)


class Deliverer(Protocol):
    async def deliver(self, url: str, secret: Optional[str], payload: CallbackPayload,
                      png: Optional[bytes]) -> CallbackRecord: ...


class CallbackNotifier:
    """Sends each finished job's callback once, in the background, and persists the outcome.

    A callback still ``pending`` in the store (the process died before sending it) is sent at
    the next start: that is the first attempt, not a retry.
    """

    def __init__(self, store: JobStore, files: ImageFiles, sender: Deliverer, *,
                 image_url: Callable[[str], str], metrics: Optional[Metrics] = None,
                 not_before_seconds: float = 0.0) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.files = files
        self.sender = sender
        self.image_url = image_url
        self.not_before_seconds = not_before_seconds
        self._tasks: dict[str, asyncio.Task[CallbackRecord]] = {}

    def schedule(self, job: JobRecord) -> None:
        """Send in the background; a job already being sent is not sent twice."""
        if job.callback_status is not CallbackStatus.PENDING or job.id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self.notify(job), name=f"callback-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))

    async def resend_pending(self) -> int:
        jobs = await self.store.pending_callbacks()
        for job in jobs:
            self.schedule(job)
        return len(jobs)

    async def drain(self, timeout: float) -> None:
        """Wait for callbacks under way (bounded); what is left stays pending for the next start."""
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()), timeout=timeout)
        for task in list(self._tasks.values()):
            task.cancel()

    async def notify(self, job: JobRecord) -> CallbackRecord:
        not_before = job.callback_not_before(self.not_before_seconds)
        if not_before is not None and not_before > time.time():
            await asyncio.sleep(not_before - time.time())  # the validator fails callbacks that come too early
        request = job.request
        finished_at = datetime.fromtimestamp(job.finished_at or 0, tz=timezone.utc)
        if not request.callback_url:
            record = CallbackRecord(status=CallbackStatus.SKIPPED, payload_status=job.status)
        elif request.expiry is not None and request.expiry <= datetime.now(timezone.utc):
            record = CallbackRecord(status=CallbackStatus.EXPIRED, payload_status=job.status,
                                    error=f"expiry {request.expiry.isoformat()} had passed")
        else:
            completed = job.status is JobStatus.COMPLETED
            payload = CallbackPayload(
                job_id=job.id,
                status=job.status,
                completed_at=finished_at,
                image_url=self.image_url(job.id) if completed else None,
                error=job.error,
            )
            png = await self.files.read_result(job.id) if completed else None
            record = await self.sender.deliver(request.callback_url, request.callback_secret, payload, png)
        await self.store.set_callback(job.id, record)
        self.metrics.callbacks.labels(record.status.value).inc()
        log.info("callback for %s: %s%s", job.id, record.status.value,
                 f" ({record.status_code})" if record.status_code else "")
        return record
