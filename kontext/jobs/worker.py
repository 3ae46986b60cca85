"""The queue consumer: runs one job at a time through the engine, off the event loop."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any, Awaitable, Callable, Optional, Protocol

from kontext.engine.engine import state_name
from kontext.delivery.fetch import ImageFetchError
from kontext.media.files import ImageFiles
from kontext.jobs.record import JobOutcome, JobRecord, now
from kontext.metrics import Metrics
from kontext.jobs.queue import JobQueue
from kontext.engine.recipes import EditParams
from kontext.jobs.store import JobStore
from protocol import ImageSource, JobStatus

log = logging.getLogger(__name__)

ERROR_MAX_CHARS = 500
RETRY_SECONDS = 5.0
"""Delay before a job the store could not update is tried again."""


class WorkerState(str, Enum):
    """new -> starting (engine loading) -> ready <-> running -> stopped; or defunct."""

    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    RUNNING = "running"
    STOPPED = "stopped"
    DEFUNCT = "defunct"
    """The engine failed to load: queued jobs are failed with its reason."""


class Engine(Protocol):
    state: Any
    error: Optional[str]

    def load(self) -> None: ...
    def edit(self, image_bytes: bytes, params: EditParams, *, max_pixels: int,
             on_step: Optional[Callable[[int, int], None]] = None) -> Any: ...


class JobFailure(Exception):
    """A job-level failure whose message is safe to show to the caller."""


ImageFetcher = Callable[[str], Awaitable[bytes]]
JobFinished = Callable[[JobRecord], None]


class Worker:
    """Consumes the queue. Each job: mark processing -> resolve input -> engine -> PNG -> done.

    The engine runs on a dedicated single thread (one job per device, never batched), so the
    event loop keeps answering status requests while a job runs.
    """

    def __init__(
        self,
        engine: Engine,
        store: JobStore,
        queue: JobQueue,
        files: ImageFiles,
        *,
        fetch_image: ImageFetcher,
        on_finished: JobFinished,
        max_pixels: int,
        max_attempts: int,
        metrics: Optional[Metrics] = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.queue = queue
        self.files = files
        self.fetch_image = fetch_image
        self.on_finished = on_finished
        self.max_pixels = max_pixels
        self.max_attempts = max_attempts
        self.metrics = metrics or Metrics()
        self.state = WorkerState.NEW
        self.current_job: Optional[str] = None
        self._progress: Optional[tuple[str, int, int]] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kontext-engine")
        self._idle = asyncio.Event()
        self._idle.set()
        self._retries: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def load_engine(self) -> None:
        """Load the model on the engine thread; a failure makes the worker defunct, not the process."""
        self.state = WorkerState.STARTING
        started = now()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.load)
        failed = state_name(self.engine.state) == "failed"
        self.state = WorkerState.DEFUNCT if failed else WorkerState.READY
        self.metrics.engine_load_seconds.set(now() - started)
        self.metrics.engine_ready.set(0 if failed else 1)
        if failed:
            log.error("engine failed to load: %s", self.engine.error)

    async def run(self, *, eager: bool = True) -> None:
        """Consume forever (cancel to stop). The engine loads now (eager) or on the first job."""
        if eager:
            await self.load_engine()
        while True:
            job_id = await self.queue.get()
            self._idle.clear()
            if self.state is WorkerState.NEW:
                await self.load_engine()
            try:
                await self._run_one(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the store itself failed (disk full?): keep the job, keep going
                log.exception("could not process %s; it stays queued and is retried in %ss", job_id, RETRY_SECONDS)
                self._retry_later(job_id)
            finally:
                self._idle.set()

    def _retry_later(self, job_id: str) -> None:
        async def requeue() -> None:
            await asyncio.sleep(RETRY_SECONDS)
            await self.queue.put(job_id)

        task = asyncio.get_running_loop().create_task(requeue())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def shutdown(self) -> None:
        self.state = WorkerState.STOPPED
        for task in self._retries:
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def busy(self) -> bool:
        return self.current_job is not None

    def progress(self, job_id: str) -> Optional[tuple[int, int]]:
        current = self._progress
        return (current[1], current[2]) if current and current[0] == job_id else None

    # -- one job --------------------------------------------------------------------------

    async def _run_one(self, job_id: str) -> None:
        job = await self.store.get(job_id)
        if job is None or job.status.finished or job.swept_at is not None:
            return
        if job.attempts >= self.max_attempts:
            await self._finish(job, error=(
                f"job was interrupted {job.attempts} time(s) while running (the miner process stopped); "
                "not retried"))
            return
        if self.state is WorkerState.DEFUNCT:
            await self._finish(job, error=f"the edit engine failed to load: {self.engine.error}")
            return
        job = job.evolve(status=JobStatus.PROCESSING, started_at=now(), attempts=job.attempts + 1)
        await self.store.mark_started(job.id, started_at=job.started_at or 0.0, attempts=job.attempts)
        self.current_job, self.state = job_id, WorkerState.RUNNING
        try:
            job, image = await self._resolve_input(job)
            output = await self._run_engine(job, image)
            try:
                await self.files.write_result(job.id, output.png)
            except OSError as exc:  # disk full, read-only: the temp file is already gone
                raise JobFailure(f"could not store the result PNG: {exc.strerror or exc}") from None
        except JobFailure as failure:
            await self._finish(job, error=str(failure))
        except asyncio.CancelledError:
            raise  # left "processing" in the store: the next start runs it again
        except Exception as exc:  # noqa: BLE001 - any other failure still ends the job
            log.exception("job %s failed", job_id)
            await self._finish(job, error=_short(f"internal error: {type(exc).__name__}: {exc}"))
        else:
            await self._finish(job, output=output)
        finally:
            self.current_job, self._progress = None, None
            if self.state is WorkerState.RUNNING:
                self.state = WorkerState.READY

    async def _resolve_input(self, job: JobRecord) -> tuple[JobRecord, bytes]:
        """Load the input image by the job's source; a vanished reference falls back if it can."""
        source = job.image_source
        if source is ImageSource.REFERENCE_EDIT:
            reference_id = job.request.reference_job_id or ""
            reference = await self.store.get(reference_id)
            data = None
            if reference is not None and reference.status is JobStatus.COMPLETED and reference.swept_at is None:
                data = await self.files.read_result(reference_id)
            if data is not None:
                return job, data
            if await self.files.has_input(job.id):
                source = ImageSource.BASE64_FALLBACK
            elif job.request.image_url:
                source = ImageSource.URL_FALLBACK
            else:
                state = reference.status.value if reference else "gone"
                raise JobFailure(f"reference_job_id {reference_id} did not complete ({state}) and no fallback "
                                 "image was given")
            job = job.evolve(image_source=source)
            await self.store.set_image_source(job.id, source)
        if source in (ImageSource.BASE64, ImageSource.BASE64_FALLBACK):
            data = await self.files.read_input(job.id)
            if data is None:
                raise JobFailure("the uploaded image is missing from the data directory")
            return job, data
        try:
            return job, await self.fetch_image(job.request.image_url or "")
        except ImageFetchError as exc:
            raise JobFailure(_short(str(exc))) from None

    async def _run_engine(self, job: JobRecord, image: bytes) -> Any:
        params = EditParams.from_request(job.request)

        def on_step(step: int, total: int) -> None:
            self._progress = (job.id, step, total)

        def run() -> Any:
            return self.engine.edit(image, params, max_pixels=self.max_pixels, on_step=on_step)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except ValueError as exc:  # the recipe refused the image
            raise JobFailure(_short(f"input image: {exc}")) from None

    async def _finish(self, job: JobRecord, *, output: Any = None, error: Optional[str] = None) -> None:
        if output is not None:
            outcome = JobOutcome(status=JobStatus.COMPLETED, finished_at=now(), result_sha256=output.sha256,
                                 result_pixels_sha256=output.pixels_sha256, result_width=output.width,
                                 result_height=output.height, recipe=output.recipe)
        else:
            outcome = JobOutcome(status=JobStatus.FAILED, finished_at=now(), error=error, recipe=job.recipe)
        await self.store.mark_finished(job.id, outcome)
        job = job.evolve(**vars(outcome))
        await self.files.remove_input(job.id)
        self.metrics.jobs_finished.labels(job.status.value).inc()
        self.metrics.job_seconds.observe(outcome.finished_at - job.queued_at)
        if output is not None:
            self.metrics.edit_seconds.observe(output.seconds)
        log.info("job %s %s in %.0f ms", job.id, job.status.value, (job.run_seconds or 0.0) * 1000)
        self.on_finished(job)


def _short(text: str) -> str:
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"
