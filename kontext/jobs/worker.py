"""Workers: one per engine (device), each taking ready jobs from the shared queue and running them off the loop.

A worker's life: its engine loads (at start, or on the first job when lazy) -> it takes jobs in
priority order -> on shutdown it stops taking work, lets the running job finish within the grace
period, then interrupts it at the next denoising step (the job stays ``processing`` and runs again
at the next start). A worker whose engine fails to load leaves the rotation; the others serve on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Collection, Optional, Protocol

from kontext.engine.engine import EngineState
from kontext.errors import StorageUnavailable
from kontext.engine.recipes import EditParams
from kontext.jobs import chaining
from kontext.jobs.finish import JobFinisher
from kontext.jobs.inputs import InputPrefetcher
from kontext.jobs.persist import keep_trying
from kontext.jobs.queue import QueuedJob, RunQueue
from kontext.jobs.record import JobRecord, now
from kontext.jobs.store import JobStore
from kontext.media.files import ImageStore
from kontext.metrics import Metrics
from protocol import ImageSource, JobStatus

log = logging.getLogger(__name__)

RECENT_EDITS = 20
"""Edits (steps, seconds) a worker keeps, for the admission estimate of doors on other hosts."""
RETRY_SECONDS = 5.0
"""Delay before a job the store could not update is tried again."""
QUEUE_RETRY_MAX = 10.0
"""Longest wait between attempts to reach a queue that is away."""
THREAD_EXIT_SECONDS = 10.0
"""After an interrupt, how long the engine thread may take to reach its next step and stop (a denoising step
takes well under a second on a GPU). With SHUTDOWN_GRACE_SECONDS (60), the handlers' 5 s and the callbacks'
10 s, a stop stays inside pm2's kill_timeout (90 s)."""


def combined_state(states: Collection[EngineState]) -> EngineState:
    """Several engines as one: ready if any is ready; loading while one loads; failed only when every one failed."""
    for state in (EngineState.READY, EngineState.LOADING, EngineState.UNLOADED):
        if state in states:
            return state
    return EngineState.FAILED


class Engine(Protocol):
    state: EngineState
    error: Optional[str]

    def load(self) -> None: ...
    def edit(self, image_bytes: bytes, params: EditParams, *, max_pixels: int,
             on_step: Optional[Callable[[int, int], None]] = None) -> Any: ...
    def describe(self) -> dict[str, Any]: ...


class JobFailure(Exception):
    """A job-level failure whose message is safe to show to the caller."""


class EditInterrupted(Exception):
    """Raised from the step callback on the engine thread when a shutdown cuts the running edit off."""


class Worker:
    """One engine, its dedicated thread (one edit at a time per device, never batched) and its loop."""

    def __init__(self, name: str, engine: Engine, store: JobStore, queue: RunQueue, files: ImageStore,
                 finisher: JobFinisher, prefetcher: InputPrefetcher, *, max_pixels: int, max_attempts: int,
                 metrics: Optional[Metrics] = None) -> None:
        self.name = name
        self.engine = engine
        self.store = store
        self.queue = queue
        self.files = files
        self.finisher = finisher
        self.prefetcher = prefetcher
        self.max_pixels = max_pixels
        self.max_attempts = max_attempts
        self.metrics = metrics or Metrics()
        self.current_job: Optional[str] = None
        self.queue_error: Optional[str] = None
        """Why the queue cannot be reached now (a Redis outage), or None."""
        self.recent_edits: deque[tuple[int, float]] = deque(maxlen=RECENT_EDITS)
        self.current_steps = 0
        self._progress: Optional[tuple[str, int, int]] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
        self._task: Optional[asyncio.Task[None]] = None
        self.pool: Optional["WorkerPool"] = None
        self._stopping = False
        self._interrupt = False
        self._marked_started = False
        """Whether the current job's start was recorded (so a store retry of it is counted as one)."""
        self._retries: set[asyncio.Task[None]] = set()
        self._drained: Optional[asyncio.Future[None]] = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, *, eager: bool) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(eager), name=f"worker-{self.name}")

    @property
    def alive(self) -> bool:
        """Taking jobs, or about to: not stopped and its engine has not failed."""
        return not self._stopping and self.engine.state is not EngineState.FAILED

    @property
    def busy(self) -> bool:
        return self.current_job is not None

    def progress(self, job_id: str) -> Optional[tuple[int, int]]:
        current = self._progress
        return (current[1], current[2]) if current and current[0] == job_id else None

    def describe(self) -> dict[str, Any]:
        """What /health says of this worker: device, state, current job, self-check."""
        engine = self.engine.describe()
        return {"name": self.name, "device": engine.get("device"), "recipe": engine.get("recipe"),
                "state": self.engine.state.value,
                "current_job": self.current_job, "self_check": engine.get("self_check"), "error": self.engine.error,
                "queue_error": self.queue_error,
                "recent_edits": list(self.recent_edits), "running": self.running_work(), "taking_jobs": self.alive}

    def running_work(self) -> Optional[tuple[int, int]]:
        """(steps, steps done) of the job being edited, or None."""
        if self.current_job is None:
            return None
        progress = self.progress(self.current_job)
        return (progress[1], progress[0]) if progress else (self.current_steps, 0)

    async def load_engine(self) -> None:
        """Load the model on the engine thread; a failure takes this worker out of rotation, not the process."""
        started = now()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.load)
        failed = self.engine.state is EngineState.FAILED
        self.metrics.engine_load_seconds.labels(self.name).set(now() - started)
        self.metrics.engine_ready.labels(self.name).set(0 if failed else 1)
        if failed:
            log.error("worker %s: engine failed to load, out of rotation: %s", self.name, self.engine.error)

    async def drain(self, grace_seconds: float) -> None:
        """Stop taking work; give the running job ``grace_seconds``; then interrupt it and wait for the engine
        thread (at most THREAD_EXIT_SECONDS). Nothing is written to the store after this returns. A second
        call (``Runtime.stop`` after ``quiesce``) waits for the first one's end and does nothing more."""
        if self._drained is None:
            self._drained = asyncio.ensure_future(self._drain(grace_seconds))
        await asyncio.shield(self._drained)

    async def _drain(self, grace_seconds: float) -> None:
        self._stopping = True
        await self._cancel_helpers()
        if self._task is None:
            return
        if self.busy and grace_seconds > 0:
            log.info("worker %s: waiting up to %.0fs for job %s", self.name, grace_seconds, self.current_job)
            await asyncio.wait([self._task], timeout=grace_seconds)
        if not self._task.done():
            if self.busy:
                log.warning("worker %s: job %s cut off by the shutdown; it runs again at the next start", self.name,
                            self.current_job)
            self._interrupt = True
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self._cancel_helpers()  # and those the job started during the grace period
        done = asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done, THREAD_EXIT_SECONDS)

    async def _cancel_helpers(self) -> None:
        """Cancel the retries and the waits for a reference, and wait until they have ended: their entries stay
        held (the next start, or a shared queue's lease, brings those jobs back)."""
        while self._retries:
            tasks = list(self._retries)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._retries.difference_update(tasks)

    async def _run(self, eager: bool) -> None:
        if eager:
            await self.load_engine()
        backoff = 1.0
        while self.alive:
            try:
                await self._take_one()
                backoff = 1.0
                if self.queue_error is not None:
                    log.info("worker %s: the queue is reachable again", self.name)
                    self.queue_error = None
            except Exception as exc:  # noqa: BLE001 - the queue (Redis) is away or refuses: keep trying, say so
                message = exc.message if isinstance(exc, StorageUnavailable) else f"{type(exc).__name__}: {exc}"
                if self.queue_error is None:
                    log.error("worker %s: %s; retrying every %.0fs at most", self.name, message, QUEUE_RETRY_MAX,
                              exc_info=not isinstance(exc, StorageUnavailable))
                self.queue_error = message
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, QUEUE_RETRY_MAX)
        if self.engine.state is EngineState.FAILED and not self._stopping and self.pool is not None \
                and not any(worker.alive for worker in self.pool.workers) and not self.queue.shared:
            await self._fail_everything()  # (a shared queue's jobs wait for the other hosts' workers)

    async def _fail_everything(self) -> None:
        """No engine of this process loaded and the queue is its own: rather than leave jobs waiting forever,
        fail each with the reason."""
        while not self._stopping:
            entry = await self.queue.get()
            try:
                job = await self.store.get(entry.job_id)
                if job is not None and not job.status.finished:
                    await self.finisher.fail(job, f"the edit engine failed to load: {self.engine.error}")
            finally:
                await self.queue.done(entry)

    async def _take_one(self) -> None:
        entry = await self.queue.get()
        if not self.alive:  # stopped or failed while waiting: leave the job to the others (or the next start)
            await self.queue.requeue(entry)
            return
        if self.engine.state is EngineState.UNLOADED:
            await self.load_engine()
            if self.engine.state is EngineState.FAILED:
                await self.queue.requeue(entry)
                return
        self.current_job = entry.job_id
        self._marked_started = False
        handed_on = False
        try:
            handed_on = await self._run_one(entry)
        except asyncio.CancelledError:
            # Cut off by a shutdown: the job stays "processing" in the store and its entry stays open, so
            # the next start (one host) or another worker once the lease lapses (a shared queue) runs it again.
            handed_on = True
            raise
        except Exception:  # noqa: BLE001 - the store itself failed (disk full?): keep the job, keep going
            log.exception("worker %s could not process %s; it is tried again in %ss", self.name, entry.job_id,
                          RETRY_SECONDS)
            self.metrics.store_retries.inc()
            self._retry_later(entry, counted_as_started=self._marked_started)
            handed_on = True
        finally:
            self.current_job, self._progress = None, None
            if not handed_on:
                await self.queue.done(entry)

    async def _requeue_eventually(self, entry: QueuedJob) -> None:
        """``queue.requeue`` (at the entry's own priority: stake order holds) from a helper task: tried until it
        works, so no outage strands the job."""
        await keep_trying(lambda: self.queue.requeue(entry), f"queueing {entry.job_id} again")

    def _retry_later(self, entry: QueuedJob, *, counted_as_started: bool) -> None:
        """Queue the job again after RETRY_SECONDS; a run the store had counted as started is recorded as a store
        retry, so MAX_ATTEMPTS still counts only runs cut off by a stopped process."""
        async def requeue() -> None:
            await asyncio.sleep(RETRY_SECONDS)
            if counted_as_started:
                await keep_trying(lambda: self.store.count_store_retry(entry.job_id),
                                  f"recording the store retry of {entry.job_id}")
            await self._requeue_eventually(entry)

        task = asyncio.get_running_loop().create_task(requeue())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    # -- one job --------------------------------------------------------------------------

    async def _run_one(self, entry: QueuedJob) -> bool:
        """Run the entry's job; True when the entry was handed on (to the prefetcher, or parked behind its
        reference) and whoever took it closes it."""
        job = await self.store.get(entry.job_id)
        if job is None or job.status.finished or job.swept_at is not None:
            return False
        self.current_steps = job.request.num_inference_steps
        reason = job.cut_off_too_often(self.max_attempts) if entry.redelivered else None
        if reason is not None:  # its worker died mid-run as often as allowed: as a restart would, fail it
            await self.finisher.fail(job, reason)
            return False
        try:
            image = await self._input(job, entry)
        except JobFailure as failure:
            await self.finisher.fail(job, str(failure))
            return False
        if image is None:
            return True
        job = job.evolve(status=JobStatus.PROCESSING, started_at=now(), attempts=job.attempts + 1, worker=self.name)
        if not await self.store.mark_started(job.id, started_at=job.started_at or 0.0, attempts=job.attempts,
                                             worker=self.name):
            return False  # it finished meanwhile (another worker ran it)
        self._marked_started = True
        try:
            output = await self._run_engine(job, image)
            try:
                await self.files.write_result(job.id, output.png)
            except StorageUnavailable as exc:  # disk full, read-only (the temp file is already gone), Redis away
                raise JobFailure(f"could not store the result PNG: {exc.message}") from None
        except JobFailure as failure:
            await self.finisher.fail(job, str(failure))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure still ends the job
            log.exception("job %s failed", job.id)
            await self.finisher.fail(job, f"internal error: {type(exc).__name__}: {exc}")
        else:
            finished = await self.finisher.complete(job, output)
            if finished.run_seconds is not None:
                self.recent_edits.append((job.request.num_inference_steps, finished.run_seconds))
        return False

    async def _input(self, job: JobRecord, entry: QueuedJob) -> Optional[bytes]:
        """The bytes to edit, or None when the job is not runnable yet (download pending, reference running)."""
        source = job.image_source
        if source is ImageSource.REFERENCE_EDIT:
            reference = await self.store.get(job.request.reference_job_id or "")
            try:
                run_input = await chaining.input_at_run(job, reference, self.files)
            except chaining.ChainBroken as exc:
                raise JobFailure(str(exc)) from None
            if run_input.wait_for is not None:
                self.queue_after(entry, run_input.wait_for)
                return None
            if run_input.data is not None:
                return run_input.data
            source = run_input.source
            await self.store.set_image_source(job.id, source)
        data = await self.files.read_input(job.id)
        if data is not None:
            return data
        if source in chaining.URL_SOURCES and job.request.image_url:
            self.prefetcher.schedule(job.id, job.request.image_url, entry.priority, entry,
                                     steps=job.request.num_inference_steps)
            return None
        raise JobFailure("the uploaded image is missing from the data directory")

    def queue_after(self, entry: QueuedJob, reference_id: str) -> None:
        """Run ``entry`` once its reference has finished (checked again every RETRY_SECONDS / 10)."""
        async def later() -> None:
            while True:
                await asyncio.sleep(RETRY_SECONDS / 10)
                reference = await keep_trying(lambda: self.store.get(reference_id), f"reading {reference_id}")
                if reference is None or reference.status.finished:
                    await self._requeue_eventually(entry)
                    return

        task = asyncio.get_running_loop().create_task(later())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _run_engine(self, job: JobRecord, image: bytes) -> Any:
        params = EditParams.from_request(job.request)

        def on_step(step: int, total: int) -> None:
            if self._interrupt:
                raise EditInterrupted(f"job {job.id} cut off by a shutdown")
            self._progress = (job.id, step, total)

        def run() -> Any:
            return self.engine.edit(image, params, max_pixels=self.max_pixels, on_step=on_step)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except ValueError as exc:  # the recipe refused the image
            raise JobFailure(f"input image: {exc}") from None  # (the finisher shortens what it records)
        finally:
            self._progress = None  # the denoising is over, before the end is recorded


class WorkerPool:
    """Every worker of this process, seen as one: what the service and /health read."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        for worker in workers:
            worker.pool = self

    def start(self, *, eager: bool) -> None:
        for worker in self.workers:
            worker.start(eager=eager)

    async def drain(self, grace_seconds: float) -> None:
        await asyncio.gather(*(worker.drain(grace_seconds) for worker in self.workers))

    @property
    def state(self) -> EngineState:
        return combined_state({worker.engine.state for worker in self.workers})

    @property
    def error(self) -> Optional[str]:
        errors = [f"{w.name}: {w.engine.error}" for w in self.workers if w.engine.error]
        return "; ".join(errors) or None

    def running(self) -> int:
        return sum(worker.busy for worker in self.workers)

    def running_work(self) -> list[tuple[int, int]]:
        return [work for worker in self.workers if (work := worker.running_work()) is not None]

    def serving(self) -> int:
        """Workers ready to take a job now (their engine loaded, not stopping)."""
        return sum(worker.alive and worker.engine.state is EngineState.READY for worker in self.workers)

    def progress(self, job_id: str) -> Optional[tuple[int, int]]:
        for worker in self.workers:
            current = worker.progress(job_id)
            if current is not None:
                return current
        return None

    def describe(self) -> dict[str, Any]:
        engines = [worker.engine.describe() for worker in self.workers]
        first = dict(engines[0]) if engines else {}
        first["state"] = self.state.value
        first["error"] = self.error
        return {**first, "workers": [worker.describe() for worker in self.workers]}
