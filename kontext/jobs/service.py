"""EditService: the business rules of the edit contract (submit, status, results, health), once, for every door."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Optional

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
from kontext.jobs import chaining
from kontext.jobs.admission import AdmissionControl
from kontext.jobs.events import JobEvents
from kontext.jobs.inputs import InputPrefetcher, enqueue
from kontext.jobs.queue import RunQueue
from kontext.jobs.record import JobRecord, request_digest
from kontext.jobs.status import result_url, status_record
from kontext.jobs.store import JobStore
from kontext.jobs.upkeep import never_accepted
from kontext.jobs.workers_view import WorkersView
from kontext.media.files import ImageStore
from kontext.media.images import decode_base64_image
from kontext.metrics import Metrics
from kontext.settings import Settings
from protocol import CallbackStatus, EditAccepted, EditRequest, JobStatus, StatusRecord
from protocol.limits import JOB_ID_PATTERN, JOB_ID_PREFIX, KNOWN_JOB_TYPES

log = logging.getLogger(__name__)

_JOB_ID = re.compile(JOB_ID_PATTERN)

WAIT_POLL_SECONDS = 0.5
"""A waiter re-reads the store this often (a worker in another process wakes no local event)."""


@dataclass(frozen=True)
class ResultImage:
    job_id: str
    png: bytes
    sha256: str
    seed: int
    recipe: Optional[str]


class EditService:
    """Business rules of the edit contract, shared by every door: the public door, the sidecar and the synapses."""

    def __init__(self, settings: Settings, store: JobStore, queue: RunQueue, files: ImageStore, *,
                 workers: Optional[WorkersView] = None, prefetcher: Optional[InputPrefetcher] = None,
                 metrics: Optional[Metrics] = None, events: Optional[JobEvents] = None,
                 admission: Optional[AdmissionControl] = None) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.files = files
        self.workers = workers
        self.prefetcher = prefetcher
        self.metrics = metrics
        self.events = events or JobEvents()
        self.admission = admission or AdmissionControl(settings.admission_deadline_seconds, settings.admission_window,
                                                       margin_seconds=settings.admission_margin_seconds)
        self.accepting = True
        self.stopping = False
        """Set when the process stops serving, after its drain: every ``wait_finished`` answers at its next poll."""
        self._claims = asyncio.Lock()
        """Serialises the bound check and the id's claim (a quick insert), never an image's write."""
        self._claimed = 0
        """Jobs claimed whose image is being stored: not queued yet, but waiting all the same."""

    # -- submit ---------------------------------------------------------------------------

    async def submit(self, request: EditRequest, *, priority: float = 0.0) -> EditAccepted:
        """Validate, claim the id, store the input and queue one job; an ``EditError`` for every refusal. The same
        ``job_id`` and request again answers as the first time (a lost reply's retry); another is a ``JobConflict``."""
        self._check_accepting()
        if not request.has_image_source:
            raise InvalidRequest(
                "one of image_b64, image_url or reference_job_id is required",
                fields=[{"field": f, "message": "missing"} for f in ("image_b64", "image_url", "reference_job_id")],
            )
        input_bytes = None
        if request.image_b64 is not None:
            input_bytes = await asyncio.to_thread(decode_base64_image, request.image_b64, field="image_b64",
                                                  max_bytes=self.settings.max_image_bytes,
                                                  max_pixels=self.settings.max_image_pixels)
        digest = request_digest(request)
        job, fresh = await self._claim(request, priority, digest)  # (counted in ``waiting`` until queued)
        if not fresh and not (input_bytes is not None and await never_accepted(job, self.files)):
            return _accepted(job.id)  # the same request again: the job it made answers for it
        try:  # a fresh claim, or the retry of one whose submit stopped before its image was stored: finish it
            if input_bytes is not None:
                await self.files.write_input(job.id, input_bytes)
            await enqueue(job, self.queue, self.files, self.prefetcher)
        except StorageUnavailable as exc:  # claimed but not stored or queued: undo, so the caller's retry is new
            if fresh:
                with contextlib.suppress(StorageUnavailable):  # (if this fails too: recovery, or requeue_orphans)
                    await self.store.delete(job.id)
                    await self.files.remove_input(job.id)
            log.error("cannot store or queue job %s: %s", job.id, exc.message)
            raise _cannot_take(exc) from None
        finally:
            self._claimed -= fresh
        if self.metrics is not None and fresh:
            self.metrics.jobs_submitted.inc()
        log.info("accepted %s (source=%s, priority=%s)", job.id, job.image_source.value if job.image_source else "-",
                 job.priority)
        return _accepted(job.id)

    async def _claim(self, request: EditRequest, priority: float, digest: str) -> tuple[JobRecord, bool]:
        """Check the bound and the deadline, then claim the job id with the record's insert (unique: of two doors
        inserting one id, one wins): (the job, True). (The job, False) when the id holds this very request already."""
        async with self._claims:
            if request.job_id is not None and (same := await self._same_again(request.job_id, digest)):
                return same, False
            if await self.waiting() >= self.settings.max_queue:
                raise ServiceBusy(f"the queue is full ({self.settings.max_queue} jobs waiting); retry later")
            reference = await self.store.get(request.reference_job_id) if request.reference_job_id else None
            source, priority = await chaining.source_at_submit(request, reference, self.files, priority)
            await self._admit(request.num_inference_steps, priority)
            job = JobRecord(id=request.job_id or f"{JOB_ID_PREFIX}{uuid.uuid4()}", request=request, priority=priority,
                            image_source=source, recipe=self.settings.kontext_recipe, request_digest=digest,
                            callback_status=CallbackStatus.PENDING if request.callback_url else CallbackStatus.SKIPPED)
            try:
                await self.store.insert(job)
            except JobConflict:  # another door claimed it a moment ago
                if same := await self._same_again(job.id, digest):
                    return same, False
                raise
            except StorageUnavailable as exc:
                log.error("cannot store job %s: %s", job.id, exc.message)
                raise _cannot_take(exc) from None
            self._claimed += 1  # until it is queued: the next claim's bound counts it
            return job, True

    async def _same_again(self, job_id: str, digest: str) -> Optional[JobRecord]:
        """The job at ``job_id`` if it holds this request; None if none; ``JobConflict`` if another (or expired)."""
        existing = await self.store.get(job_id)
        if existing is None:
            return None
        if existing.swept_at is None and existing.request_digest == digest:
            log.info("job %s sent again with the same request: answered as the first time", job_id)
            return existing
        raise JobConflict(f"job_id {job_id!r} already exists with another request"
                          if existing.swept_at is None else f"job_id {job_id!r} was used by a job that has expired",
                          fields=[{"field": "job_id", "message": "already exists"}])

    async def _admit(self, steps: int, priority: float) -> None:
        """The deadline check (ADMISSION_DEADLINE_SECONDS) over the work ahead: queued and deferred jobs of this
        priority band or above, jobs whose input is downloading (they run next, whatever their priority), and
        what the jobs workers hold have left."""
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
        """What MAX_QUEUE bounds: jobs no device runs yet (queued, taken ahead, downloading, or being stored)."""
        return await self.depth() + (len(self.prefetcher) if self.prefetcher is not None else 0) + self._claimed

    async def depth(self) -> int:
        """Queued jobs: in the queue (deferred ones too), or taken ahead by a worker and not on its device yet."""
        ahead = len(self.workers.waiting_for_device()) if self.workers is not None else 0
        return await self.queue.size() + ahead

    def capacity(self) -> dict[str, bool]:
        """``GET /capacity``: each claimed job type is true only while the engine is ready and accepting."""
        ready = self.accepting and self.engine_state() == "ready"
        claimed = self.settings.capacity_job_types
        return {job_type: ready and job_type in claimed for job_type in dict.fromkeys((*KNOWN_JOB_TYPES, *claimed))}

    # -- read -----------------------------------------------------------------------------

    async def status(self, job_id: str) -> StatusRecord:
        job = await self._get(job_id)
        position = await self._position(job) if job.status is JobStatus.QUEUED else None
        progress = self.workers.progress(job.id) if self.workers is not None else None
        return status_record(job, self.settings, queue_position=position, progress=progress)

    async def _position(self, job: JobRecord) -> Optional[int]:
        """1-based place in the run order: the jobs workers took ahead come first, then the queue's."""
        taken = self.workers.waiting_for_device() if self.workers is not None else []
        if job.id in taken:
            return taken.index(job.id) + 1
        position = await self.queue.position(job.id)
        return None if position is None else position + len(taken)

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
        """A job finished in this process: wake its waiters (the admission estimate learns from the workers)."""
        self.events.finished(job.id)

    async def _get(self, job_id: str) -> JobRecord:
        if not _JOB_ID.fullmatch(job_id):
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

    async def health(self) -> dict[str, Any]:
        counts = await self.store.count_by_status()
        edit_state = self.engine_state()
        if edit_state == "unloaded":  # lazy: accepting, the first job loads the model; eager: the load starts now
            edit_state = "ready" if self.settings.kontext_load == "lazy" else "loading"
        body: dict[str, Any] = {
            "status": "ok" if edit_state in ("ready", "loading", "disabled") else "degraded",
            "services": {"kontext_edit": edit_state},
            "accepting": self.accepting and edit_state in ("ready", "loading"),
            "queue": {"depth": await self.depth(), "max": self.settings.max_queue,
                      "downloading": len(self.prefetcher) if self.prefetcher is not None else 0},
            "jobs": counts,
            "profile": self.settings.timing(),
        }
        if self.workers is not None:
            body["engine"] = self.workers.describe()
            if self.workers.error:
                body["engine_error"] = self.workers.error
        return body


def _cannot_take(exc: StorageUnavailable) -> StorageUnavailable:
    return StorageUnavailable(f"the miner cannot take new jobs right now ({exc.message}); retry later",
                              retry_after=30)


def _accepted(job_id: str) -> EditAccepted:
    return EditAccepted(job_id=job_id, status_url=f"/edit/status/{job_id}", result_url=result_url(job_id))
