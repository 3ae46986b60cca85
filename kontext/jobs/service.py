"""EditService: the business rules of the edit contract (submit, status, results, recovery, retention), once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Protocol

from kontext.errors import (
    InvalidRequest,
    JobConflict,
    JobExpired,
    JobFailed,
    JobNotFound,
    ResultNotReady,
    ServiceBusy,
    ServiceDisabled,
    ServiceUnavailable,
    StorageUnavailable,
    SyncTimeout,
)
from kontext.delivery.guard import without_credentials
from kontext.engine.engine import EngineState
from kontext.engine.recipes import ignored_fields
from kontext.jobs import chaining
from kontext.jobs.admission import AdmissionControl
from kontext.jobs.events import JobEvents
from kontext.jobs.finish import JobFinisher
from kontext.jobs.inputs import InputPrefetcher
from kontext.jobs.queue import RunQueue
from kontext.jobs.record import JobRecord, now
from kontext.jobs.store import JobStore
from kontext.media.files import ImageStore
from kontext.media.images import decode_base64_image
from kontext.metrics import Metrics
from kontext.settings import Settings
from protocol import (
    CallbackPending,
    CallbackRecord,
    CallbackStatus,
    EditAccepted,
    EditRequest,
    JobStatus,
    Progress,
    RequestSummary,
    StatusRecord,
)
from protocol.limits import JOB_ID_PATTERN, JOB_ID_PREFIX, KNOWN_JOB_TYPES

log = logging.getLogger(__name__)

_JOB_ID = re.compile(JOB_ID_PATTERN)

ORPHAN_AFTER_SECONDS = 60.0
"""A stored job with no queue entry this long after it arrived was never queued (``requeue_orphans``)."""
TOMBSTONE_DAYS = 7
"""How long a swept job still answers 410 (then 404)."""
WAIT_POLL_SECONDS = 0.5
"""A waiter re-reads the store this often (a worker in another process wakes no local event)."""


@dataclass(frozen=True)
class ResultImage:
    job_id: str
    png: bytes
    sha256: str
    seed: int
    recipe: Optional[str]


class WorkersView(Protocol):
    """What the service reads of the workers (``WorkerPool`` in this process): their engines' state,
    how many serve and run, and a running job's progress."""

    @property
    def state(self) -> EngineState: ...
    @property
    def error(self) -> Optional[str]: ...
    def running(self) -> int: ...
    def running_work(self) -> list[tuple[int, int]]:
        """(steps, steps done) of each job being edited."""
        ...
    def serving(self) -> int: ...
    def progress(self, job_id: str) -> Optional[tuple[int, int]]: ...
    def describe(self) -> dict[str, Any]: ...


class EditService:
    """Business rules of the edit contract, shared by every door: the public door, the sidecar and the synapses."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        queue: RunQueue,
        files: ImageStore,
        *,
        workers: Optional[WorkersView] = None,
        prefetcher: Optional[InputPrefetcher] = None,
        finisher: Optional[JobFinisher] = None,
        metrics: Optional[Metrics] = None,
        events: Optional[JobEvents] = None,
        admission: Optional[AdmissionControl] = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.files = files
        self.workers = workers
        self.prefetcher = prefetcher
        self.finisher = finisher
        self.metrics = metrics
        self.events = events or JobEvents()
        self.admission = admission or AdmissionControl(settings.admission_deadline_seconds, settings.admission_window,
                                                       margin_seconds=settings.admission_margin_seconds)
        self.accepting = True
        self.stopping = False
        """Set when the process stops serving, after its drain: every ``wait_finished`` answers at its next poll."""
        self._submit_lock = asyncio.Lock()

    # -- submit ---------------------------------------------------------------------------

    async def submit(self, request: EditRequest, *, priority: float = 0.0) -> EditAccepted:
        """Validate, persist and queue one job. Raises an ``EditError`` for every refusal."""
        self._check_accepting()
        if not request.has_image_source:
            raise InvalidRequest(
                "one of image_b64, image_url or reference_job_id is required",
                fields=[{"field": f, "message": "missing"} for f in ("image_b64", "image_url", "reference_job_id")],
            )
        input_bytes = None
        if request.image_b64 is not None:
            input_bytes = await asyncio.to_thread(
                decode_base64_image,
                request.image_b64,
                field="image_b64",
                max_bytes=self.settings.max_image_bytes,
                max_pixels=self.settings.max_image_pixels,
            )
        async with self._submit_lock:
            if await self.waiting() >= self.settings.max_queue:
                raise ServiceBusy(
                    f"the queue is full ({self.settings.max_queue} jobs waiting); retry later",
                )
            job_id = request.job_id or f"{JOB_ID_PREFIX}{uuid.uuid4()}"
            if await self.store.get(job_id) is not None:
                raise JobConflict(f"job_id {job_id!r} already exists",
                                  fields=[{"field": "job_id", "message": "already exists"}])
            reference = await self.store.get(request.reference_job_id) if request.reference_job_id else None
            source, priority = await chaining.source_at_submit(request, reference, self.files, priority)
            await self._admit(request.num_inference_steps, priority)
            callback = CallbackStatus.PENDING if request.callback_url else CallbackStatus.SKIPPED
            job = JobRecord(id=job_id, request=request, priority=priority, image_source=source,
                            callback_status=callback, recipe=self.settings.kontext_recipe)
            try:
                if input_bytes is not None:
                    await self.files.write_input(job_id, input_bytes)
                await self.store.insert(job)
            except StorageUnavailable as exc:  # either store's failure, or the upload's own write
                with contextlib.suppress(StorageUnavailable):
                    await self.files.remove_input(job_id)
                log.error("cannot store job %s: %s", job_id, exc.message)
                raise StorageUnavailable(
                    f"the miner cannot store new jobs right now ({exc.message}); retry later") from None
            try:
                await self._enqueue(job)
            except StorageUnavailable as exc:  # stored but not queued: undo, so the caller's retry is not a 409
                with contextlib.suppress(StorageUnavailable):  # (if this fails too, requeue_orphans)
                    await self.store.delete(job_id)
                    await self.files.remove_input(job_id)
                log.error("cannot queue job %s: %s", job_id, exc.message)
                raise StorageUnavailable(f"the miner cannot queue new jobs right now ({exc.message}); retry later") from None
        if self.metrics is not None:
            self.metrics.jobs_submitted.inc()
        log.info("accepted %s (source=%s, priority=%s)", job_id, source.value, priority)
        return EditAccepted(job_id=job_id, status_url=f"/edit/status/{job_id}", result_url=_result_url(job_id))

    async def _admit(self, steps: int, priority: float) -> None:
        """The deadline check (ADMISSION_DEADLINE_SECONDS) over the work ahead: queued and deferred jobs of this
        priority band or above, jobs whose input is downloading (they run next, whatever their priority), and
        what the running jobs have left."""
        queued = await self.queue.ahead_of(priority)
        downloading = self.prefetcher.pending_steps() if self.prefetcher is not None else []
        running = self.workers.running_work() if self.workers is not None else []
        serving = self.workers.serving() if self.workers is not None else 1
        self.admission.check(steps=steps, ahead=[*queued, *downloading], running=running, workers=serving)

    def _check_accepting(self) -> None:
        if not self.settings.enable_kontext_edit:
            raise ServiceDisabled("image editing is disabled on this miner (ENABLE_KONTEXT_EDIT=false)")
        if not self.accepting:
            raise ServiceUnavailable("the miner is shutting down; retry against another miner", retry_after=30)
        if self.engine_state() == "failed":
            raise ServiceUnavailable(f"the edit engine failed to load: {self.workers.error if self.workers else ''}")

    def engine_state(self) -> str:
        """``disabled``, ``unloaded`` (lazy, loads on the first job), ``loading``, ``ready`` or ``failed``."""
        if not self.settings.enable_kontext_edit:
            return "disabled"
        return "ready" if self.workers is None else self.workers.state.value

    async def waiting(self) -> int:
        """Jobs accepted and not yet taken by a worker: queued, or their input still downloading."""
        return await self.queue.size() + (len(self.prefetcher) if self.prefetcher is not None else 0)

    async def _enqueue(self, job: JobRecord) -> None:
        """Runnable now, or once its image_url is downloaded (a slow URL holds up no other job)."""
        if job.image_source in chaining.URL_SOURCES and self.prefetcher is not None and job.request.image_url \
                and not await self.files.has_input(job.id):
            self.prefetcher.schedule(job.id, job.request.image_url, job.priority,
                                     steps=job.request.num_inference_steps)
        else:
            await self.queue.put(job.id, job.priority, steps=job.request.num_inference_steps)

    def capacity(self) -> dict[str, bool]:
        """``GET /capacity``: each claimed job type is true only while the engine is ready and accepting."""
        ready = self.accepting and self.engine_state() == "ready"
        claimed = self.settings.capacity_job_types
        return {job_type: ready and job_type in claimed for job_type in dict.fromkeys((*KNOWN_JOB_TYPES, *claimed))}

    # -- read -----------------------------------------------------------------------------

    async def status(self, job_id: str) -> StatusRecord:
        job = await self._get(job_id)
        position = await self.queue.position(job.id) if job.status is JobStatus.QUEUED else None
        return self.status_record(job, position)

    async def result(self, job_id: str) -> ResultImage:
        job = await self._get(job_id)
        if job.status is not JobStatus.COMPLETED:
            detail = f": {job.error}" if job.error else ""
            raise ResultNotReady(f"job {job_id} is {job.status.value}, not completed{detail}")
        png = await self.files.read_result(job_id)
        if png is None:
            raise JobExpired(f"the result of job {job_id} is no longer stored")
        return ResultImage(job_id=job_id, png=png, sha256=job.result_sha256 or "", seed=job.request.seed,
                           recipe=job.recipe)

    async def wait_result(self, job_id: str, timeout: Optional[float] = None) -> ResultImage:
        """The job's PNG once it finishes: ``JobFailed`` (422) if it failed, ``SyncTimeout`` (504) if it
        takes longer than ``timeout`` (default SYNC_TIMEOUT_SECONDS), ``ServiceUnavailable`` (503) if the process
        stops first (``stopping``); the job itself runs on in each case."""
        job = await self.wait_finished(job_id, self.settings.sync_timeout_seconds if timeout is None else timeout)
        if job.status is JobStatus.FAILED:
            raise JobFailed(f"job {job_id} failed: {job.error}", job_id=job_id)
        return await self.result(job_id)

    async def wait_finished(self, job_id: str, timeout: float) -> JobRecord:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self.events.waiter(job_id) as finished:
                job = await self._get(job_id)
                remaining = deadline - loop.time()
                if job.status.finished:
                    return job
                if self.stopping:
                    raise ServiceUnavailable(
                        f"the miner is stopping before job {job_id} finished; the job is kept and runs again when a "
                        f"worker takes it: fetch it later from /edit/status/{job_id}", job_id=job_id, retry_after=30)
                if remaining <= 0:
                    raise SyncTimeout(
                        f"job {job_id} did not finish within {timeout:g}s; it keeps running: fetch it later from "
                        f"/edit/status/{job_id}", job_id=job_id)
                await asyncio.wait([finished], timeout=min(remaining, WAIT_POLL_SECONDS))

    def finished(self, job: JobRecord) -> None:
        """A job finished in this process: wake its waiters and learn its edit time."""
        self.events.finished(job.id)
        self.admission.record(job)

    async def _get(self, job_id: str) -> JobRecord:
        if not _valid_job_id(job_id):
            raise JobNotFound(f"no job {job_id!r}: not a valid job id",
                              fields=[{"field": "job_id", "message": "invalid"}])
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} on this miner")
        if job.swept_at is not None:
            raise JobExpired(
                f"job {job_id} has expired: records and images are kept for {self.settings.retention_hours:g} hours"
            )
        return job

    def status_record(self, job: JobRecord, queue_position: Optional[int] = None) -> StatusRecord:
        request = job.request
        # Progress is a running job's: a finished one never shows it, whatever a worker (or its last heartbeat,
        # on a shared queue) still says.
        current = self.workers.progress(job.id) if self.workers and not job.status.finished else None
        clock = now()
        completed = job.status is JobStatus.COMPLETED
        return StatusRecord(
            id=job.id,
            status=job.status,
            queued_at=datetime.fromtimestamp(job.queued_at, tz=timezone.utc),
            started_at=_dt(job.started_at),
            completed_at=_dt(job.finished_at) if completed else None,
            failed_at=_dt(job.finished_at) if job.status is JobStatus.FAILED else None,
            error=job.error,
            result_url=_result_url(job.id),
            image_url=self.settings.image_url(job.id) if completed else None,
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
            queued_ms=_ms((job.started_at or clock) - job.queued_at),
            run_ms=None if job.run_seconds is None else _ms(job.run_seconds),
            request=RequestSummary(
                **request.model_dump(include=set(RequestSummary.model_fields) - {"image_source", "callback_url"}),
                callback_url=without_credentials(request.callback_url),
                image_source=job.image_source,
            ),
            **self._callback_fields(job),
        )

    def _callback_fields(self, job: JobRecord) -> dict[str, Any]:
        """``callback`` once the outcome is known, else ``callback_pending`` (the seed's clients read the former's
        presence as "the outcome is known")."""
        if job.callback_status in (CallbackStatus.PENDING, CallbackStatus.SENDING):
            not_before = job.callback_not_before(self.settings.callback_not_before_seconds)
            return {"callback_pending": CallbackPending(
                state="sending" if job.callback_status is CallbackStatus.SENDING else "waiting",
                not_before=_dt(not_before))}
        return {"callback": CallbackRecord(
            status=job.callback_status, status_code=job.callback_status_code,
            attempted_at=_dt(job.callback_attempted_at), payload_status=job.callback_payload_status,
            error=job.callback_error)}

    # -- lifecycle ------------------------------------------------------------------------

    async def recover(self) -> int:
        """Queue again every job a previous process accepted but did not finish.

        A job found ``processing`` was cut off by the process stopping; one cut off ``MAX_ATTEMPTS``
        times is failed with that reason instead, so a job that kills the process cannot loop forever.
        """
        jobs = await self.store.unfinished()
        for job in jobs:
            reason = job.cut_off_too_often(self.settings.max_attempts)
            if reason is not None and self.finisher is not None:
                await self.finisher.fail(job, reason)
                continue
            await self._enqueue(job)
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
            await self.queue.put(job.id, job.priority, steps=job.request.num_inference_steps)
        if orphans:
            log.warning("queued again %d job(s) that had no queue entry: %s", len(orphans),
                        ", ".join(job.id for job in orphans))
        return [job.id for job in orphans]

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

    async def health(self) -> dict[str, Any]:
        counts = await self.store.count_by_status()
        depth = await self.queue.size()
        edit_state = self.engine_state()
        if edit_state == "unloaded":  # lazy loading: accepting, the first job loads the model
            edit_state = "ready"
        body: dict[str, Any] = {
            "status": "ok" if edit_state in ("ready", "loading", "disabled") else "degraded",
            "services": {"kontext_edit": edit_state},
            "accepting": self.accepting and edit_state in ("ready", "loading"),
            "queue": {"depth": depth, "downloading": len(self.prefetcher) if self.prefetcher is not None else 0,
                      "max": self.settings.max_queue},
            "jobs": counts,
            "profile": self.settings.timing(),
        }
        if self.workers is not None:
            body["engine"] = self.workers.describe()
            if self.workers.error:
                body["engine_error"] = self.workers.error
        return body


def _result_url(job_id: str) -> str:
    return f"/edit/result/{job_id}"


def _valid_job_id(job_id: str) -> bool:
    return _JOB_ID.fullmatch(job_id) is not None


def _dt(epoch: Optional[float]) -> Optional[datetime]:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


def _ms(seconds: float) -> int:
    return max(0, int(round(seconds * 1000)))
