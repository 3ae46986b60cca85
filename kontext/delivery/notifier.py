"""Decides and records each finished job's one webhook: skipped, expired, delivered or failed."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Callable, Optional, Protocol

from kontext.media.files import ImageStore
from kontext.jobs.record import JobRecord
from kontext.metrics import Metrics
from kontext.jobs.store import JobStore
from protocol import CallbackPayload, CallbackRecord, CallbackStatus, JobStatus

log = logging.getLogger(__name__)

INTERRUPTED = ("the miner stopped while this callback was being sent; it is not sent again (at most one POST "
               "per job): fetch the result from result_url")


class Deliverer(Protocol):
    async def deliver(self, url: str, secret: Optional[str], payload: CallbackPayload,
                      png: Optional[bytes]) -> CallbackRecord: ...


class CallbackNotifier:
    """Sends each finished job's callback at most once, in the background, and persists the outcome.

    The callback is marked ``sending`` in the store before its POST. One still ``pending`` at the
    next start (the process stopped before sending it) is sent then: its first attempt. One left
    ``sending`` (the process stopped during the POST) is recorded ``failed`` and not sent again:
    the receiver may already have it, and there is no second POST.
    """

    def __init__(self, store: JobStore, files: ImageStore, sender: Deliverer, *,
                 image_url: Callable[[str], str], metrics: Optional[Metrics] = None,
                 not_before_seconds: float = 0.0, interrupted_after: Optional[float] = None) -> None:
        """``interrupted_after``: with a store shared by many processes, a callback ``sending`` for longer
        than this is taken as cut off (another process may be sending the younger ones); None: every one."""
        self.store = store
        self.metrics = metrics or Metrics()
        self.files = files
        self.sender = sender
        self.image_url = image_url
        self.not_before_seconds = not_before_seconds
        self.interrupted_after = interrupted_after
        self._tasks: dict[str, asyncio.Task[Optional[CallbackRecord]]] = {}
        self._posting: set[str] = set()
        """Jobs whose callback is claimed (``sending``): a shutdown lets these finish."""

    def schedule(self, job: JobRecord) -> None:
        """Send in the background; a job already being sent is not sent twice."""
        if job.callback_status is not CallbackStatus.PENDING or job.id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self.notify(job), name=f"callback-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))

    async def resend_pending(self) -> int:
        """At start, and every RESEND_SECONDS (kontext/runtime.py) in a kontext-worker: a callback a stopped
        process left mid-POST is failed, never sent twice; pending ones are sent."""
        now = time.time()
        claimed_before = None if self.interrupted_after is None else now - self.interrupted_after
        interrupted = await self.store.fail_interrupted_callbacks(INTERRUPTED, now, claimed_before)
        if interrupted:
            log.warning("%d callback(s) were being sent when the miner stopped; recorded as failed, not resent: %s",
                        len(interrupted), ", ".join(interrupted[:10]))
        jobs = await self.store.pending_callbacks()
        for job in jobs:
            self.schedule(job)
        return len(jobs)

    async def drain(self, timeout: float) -> None:
        """Let POSTs under way finish (bounded); callbacks not yet begun (waiting for ``not_before``) are
        stopped at once and stay pending for the next start."""
        posting = [task for job_id, task in self._tasks.items() if job_id in self._posting]
        for job_id, task in list(self._tasks.items()):
            if job_id not in self._posting:
                task.cancel()
        if posting:
            await asyncio.wait(posting, timeout=timeout)
        for task in list(self._tasks.values()):
            task.cancel()

    async def notify(self, job: JobRecord) -> Optional[CallbackRecord]:
        """Decide, send and record one callback; a failure is logged here, never lost in the task."""
        try:
            return await self._notify(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the background task has no one else to tell
            log.exception("callback for %s could not be handled", job.id)
            return None

    async def _notify(self, job: JobRecord) -> Optional[CallbackRecord]:
        not_before = job.callback_not_before(self.not_before_seconds)
        if not_before is not None and not_before > time.time():
            await asyncio.sleep(not_before - time.time())  # the validator fails callbacks that come too early
        request = job.request
        if not request.callback_url:
            record = CallbackRecord(status=CallbackStatus.SKIPPED, payload_status=job.status)
        elif request.expiry is not None and request.expiry <= datetime.now(timezone.utc):
            record = CallbackRecord(status=CallbackStatus.EXPIRED, payload_status=job.status,
                                    error=f"expiry {request.expiry.isoformat()} had passed")
        else:
            # From the claim on, a shutdown lets this finish (``drain``): a claim committed in the store's thread
            # while its task was cancelled would leave 'sending' with no POST behind it.
            self._posting.add(job.id)
            try:
                if not await self.store.claim_callback(job.id):  # pending -> sending: at most one POST per job
                    log.info("callback for %s is no longer pending; not sending it", job.id)
                    return None
                record = await self._post(job, request.callback_url, request.callback_secret)
            finally:
                self._posting.discard(job.id)
        await self.store.set_callback(job.id, record)
        self.metrics.callbacks.labels(record.status.value).inc()
        log.info("callback for %s: %s%s", job.id, record.status.value,
                 f" ({record.status_code})" if record.status_code else "")
        return record

    async def _post(self, job: JobRecord, url: str, secret: Optional[str]) -> CallbackRecord:
        completed = job.status is JobStatus.COMPLETED
        payload = CallbackPayload(
            job_id=job.id,
            status=job.status,
            completed_at=datetime.fromtimestamp(job.finished_at or 0, tz=timezone.utc),
            image_url=self.image_url(job.id) if completed else None,
            error=job.error,
            recipe=job.recipe,
        )
        png = await self.files.read_result(job.id) if completed else None
        return await self.sender.deliver(url, secret, payload, png)
