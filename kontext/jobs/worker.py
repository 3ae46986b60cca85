"""A worker: one engine (one device) taking jobs from the queue, two at a time so the device never waits for the CPU.

Its life is a small state machine (kontext/jobs/worker_state.py): starting -> ready -> stopping -> stopped, or
defunct (its engine failed to load, or an edit overran its run deadline: out of the rotation). Each of its two
slots takes an entry, runs it to an outcome (kontext/jobs/runner.py) and settles the entry here, in one place
(``settle``). A slot takes its next entry only once the job before it has reached the device (the intake lock):
so while job N denoises, job N+1 is taken and prepared, and job N is encoded while N+1 denoises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from typing import Any, Callable, Optional

from kontext.engine.engine import EngineState
from kontext.errors import StorageUnavailable
from kontext.jobs.device import DeviceThread
from kontext.jobs.admission import Sample
from kontext.jobs.finish import JobFinisher
from kontext.jobs.inputs import InputPrefetcher
from kontext.jobs.outcomes import Deferred, Finished, Outcome, Requeued
from kontext.jobs.persist import keep_trying
from kontext.jobs.queue import QueuedJob, RunQueue
from kontext.jobs.runner import Engine, HeldJob, JobRunner, Turn
from kontext.jobs.store import JobStore
from kontext.jobs.worker_state import MOVES, WorkerState
from kontext.media.files import ImageStore
from kontext.metrics import Metrics
from protocol import JobStatus

log = logging.getLogger(__name__)

SLOTS = 2
"""Jobs a worker holds at once: the one on the device, and the next one, prepared meanwhile."""
RECENT_EDITS = 20
"""Recent edits a worker keeps for the admission estimate, unless told otherwise (ADMISSION_WINDOW)."""
QUEUE_RETRY_MAX = 10.0
"""Longest wait between attempts to reach a queue that is away."""
RUNNER_BROKE_SECONDS = 5.0
"""An entry whose run broke unexpectedly (a bug, logged) is tried again after this."""
THREAD_EXIT_SECONDS = 10.0
"""After an interrupt, how long the device thread may take to reach its next step and stop (a denoising step
takes well under a second on a GPU). With SHUTDOWN_GRACE_SECONDS (60), the handlers' 5 s and the callbacks'
10 s, a stop stays inside the process files' kill_timeout (90 s)."""


class Worker:
    """One engine, its device thread, its two slots."""

    def __init__(self, name: str, engine: Engine, store: JobStore, queue: RunQueue, files: ImageStore,
                 finisher: JobFinisher, prefetcher: InputPrefetcher, *, max_pixels: int, max_attempts: int,
                 run_deadline: Callable[[int], float], metrics: Optional[Metrics] = None,
                 on_hung: Optional[Callable[[str], None]] = None, edit_window: int = RECENT_EDITS) -> None:
        """``run_deadline(steps)``: how long one pipeline call may take; ``on_hung``: told when one overran it;
        ``edit_window``: how many recent edits it keeps for the admission estimate (ADMISSION_WINDOW)."""
        self.name = name
        self.engine = engine
        self.store = store
        self.queue = queue
        self.metrics = metrics or Metrics()
        self.state = WorkerState.STARTING
        self.held: dict[str, HeldJob] = {}
        """The jobs this worker holds, in the order it took them."""
        self.queue_error: Optional[str] = None
        """Why the queue cannot be reached now (a Redis outage), or None."""
        self.recent_edits: deque[Sample] = deque(maxlen=edit_window)
        self.defunct_reason: Optional[str] = None
        self.runner = JobRunner(name, engine, store, files, finisher, prefetcher, max_pixels=max_pixels,
                                max_attempts=max_attempts)
        self.finisher = finisher
        self.device = DeviceThread(f"engine-{name}")
        self._on_hung = on_hung
        self.pool: Any = None
        """The ``WorkerPool`` it belongs to (set by the pool)."""
        self._started = asyncio.Event()
        self._intake = asyncio.Lock()
        self._device_turn = asyncio.Lock()
        self._loading = asyncio.Lock()
        self._interrupt = threading.Event()
        self._run_deadline = run_deadline
        self._slots: list[asyncio.Task[None]] = []
        self._loader: Optional[asyncio.Task[None]] = None
        self._busy: set[asyncio.Task[None]] = set()
        self._drained: Optional[asyncio.Future[None]] = None

    # -- state ----------------------------------------------------------------------------

    def move(self, to: WorkerState) -> None:
        """Change state along ``MOVES``; anything else is a bug, said loudly."""
        if to not in MOVES[self.state]:
            raise RuntimeError(f"worker {self.name}: no move from {self.state.value} to {to.value}")
        log.debug("worker %s: %s -> %s", self.name, self.state.value, to.value)
        self.state = to

    @property
    def alive(self) -> bool:
        """Taking jobs, or about to."""
        return self.state in (WorkerState.STARTING, WorkerState.READY)

    @property
    def serving(self) -> bool:
        """Ready to take a job now: taking jobs, its engine loaded."""
        return self.state is WorkerState.READY and self.engine.state is EngineState.READY

    @property
    def busy(self) -> bool:
        return any(job.on_device for job in self.held.values())

    def go_defunct(self, reason: str, *, restart: bool = False) -> None:
        """Out of the rotation. ``restart``: a hung device, which no code in this process can free: the runtime is
        told, and asks its supervisor for a restart."""
        if self.state in (WorkerState.STARTING, WorkerState.READY):
            self.move(WorkerState.DEFUNCT)
            self.defunct_reason = reason
            log.error("worker %s is out of the rotation: %s", self.name, reason)
            if restart and self._on_hung is not None:
                self._on_hung(f"worker {self.name}: {reason}")

    # -- what the service and /health read ---------------------------------------------------

    def progress(self, job_id: str) -> Optional[tuple[int, int]]:
        held = self.held.get(job_id)
        return (held.step, held.steps) if held is not None and held.on_device and held.step else None

    def running_work(self) -> list[tuple[int, int]]:
        """(steps, steps done) of each job it holds."""
        return [(job.steps, job.step) for job in self.held.values()]

    def waiting_for_device(self) -> list[str]:
        """Jobs it took that have not reached the device yet: queued still, next in line."""
        return [job.job_id for job in self.held.values() if not job.on_device]

    def describe(self) -> dict[str, Any]:
        """What /health (and a shared queue's heartbeat) says of this worker."""
        engine = self.engine.describe()
        on_device = next((job for job in self.held.values() if job.on_device), None)
        return {"name": self.name, "device": engine.get("device"), "recipe": engine.get("recipe"),
                "state": self.engine.state.value, "worker_state": self.state.value,
                "current_job": on_device.job_id if on_device else None, "next_jobs": self.waiting_for_device(),
                "self_check": engine.get("self_check"), "error": self.engine.error or self.defunct_reason,
                "queue_error": self.queue_error, "recent_edits": list(self.recent_edits),
                "running": self.running_work(), "taking_jobs": self.serving}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, *, eager: bool) -> None:
        loop = asyncio.get_running_loop()
        self._slots = [loop.create_task(self._slot(), name=f"worker-{self.name}-{index}") for index in range(SLOTS)]
        self._loader = loop.create_task(self._start(eager), name=f"worker-{self.name}-load")

    async def _start(self, eager: bool) -> None:
        """Eager: load the engine before any slot takes a job; lazy: ready at once, the first job loads it."""
        if eager:
            await self.load_engine()
        elif self.state is WorkerState.STARTING:
            self.move(WorkerState.READY)
        self._started.set()

    async def load_engine(self) -> None:
        """Load the model on the device thread (once); a failure takes this worker out of the rotation."""
        async with self._loading:
            if self.engine.state is not EngineState.UNLOADED:
                return
            started = asyncio.get_running_loop().time()
            await self.device.run(self.engine.load)
            failed = self.engine.state is EngineState.FAILED
            self.metrics.engine_load_seconds.labels(self.name).set(asyncio.get_running_loop().time() - started)
            self.metrics.engine_ready.labels(self.name).set(0 if failed else 1)
            if failed:
                self.go_defunct(f"its engine failed to load: {self.engine.error}")
            elif self.state is WorkerState.STARTING:
                self.move(WorkerState.READY)

    async def drain(self, grace_seconds: float) -> None:
        """Stop taking work; give the jobs it holds ``grace_seconds``; then interrupt the one on the device and wait
        for the device thread (at most THREAD_EXIT_SECONDS). Nothing is written to the store after this returns. A
        second call waits for the first one's end."""
        if self._drained is None:
            self._drained = asyncio.ensure_future(self._drain(grace_seconds))
        await asyncio.shield(self._drained)

    async def _drain(self, grace_seconds: float) -> None:
        self.move(WorkerState.STOPPING)
        self._started.set()  # a slot still waiting for the engine to load wakes, and ends
        for slot in self._slots:
            if slot not in self._busy:
                slot.cancel()  # waiting for the intake or the queue: nothing held
        busy = [slot for slot in self._slots if not slot.done()]
        if busy and self.held and grace_seconds > 0:
            log.info("worker %s: waiting up to %.0fs for %s", self.name, grace_seconds, ", ".join(self.held))
            await asyncio.wait(busy, timeout=grace_seconds)
        if any(not slot.done() for slot in self._slots):
            for job in self.held.values():
                if job.on_device:
                    log.warning("worker %s: job %s cut off by the shutdown; it runs again", self.name, job.job_id)
            self._interrupt.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._slots, return_exceptions=True), THREAD_EXIT_SECONDS)
            for slot in self._slots:
                slot.cancel()
        if self._loader is not None:
            self._loader.cancel()
        await asyncio.gather(*self._slots, *(t for t in [self._loader] if t is not None), return_exceptions=True)
        self.device.stop()
        await asyncio.to_thread(self.device.join, THREAD_EXIT_SECONDS)
        self.move(WorkerState.STOPPED)

    # -- the slots ------------------------------------------------------------------------

    async def _slot(self) -> None:
        await self._started.wait()
        backoff = 1.0
        while self.alive:
            backoff = await self._serve_one(backoff)
        if self.engine.state is EngineState.FAILED and self.pool is not None:
            await self.pool.failed_alone(self)

    async def _serve_one(self, backoff: float) -> float:
        """Take one entry once the job before it has reached the device, run it, settle it; the next backoff."""
        task = asyncio.current_task()
        assert task is not None
        await self._intake.acquire()
        released = False

        def release() -> None:  # once this job has the device (or is done), the next may be taken
            nonlocal released
            if not released:
                released = True
                self._intake.release()

        try:
            try:
                entry = await self.queue.get()
            except Exception as exc:  # noqa: BLE001 - the queue (Redis) is away or refuses: keep trying
                release()
                await self._queue_trouble(exc, backoff)
                return min(backoff * 2, QUEUE_RETRY_MAX)
            self._queue_back()
            self._busy.add(task)
            try:
                outcome = await self._take(entry, release)
            except Exception as exc:  # noqa: BLE001 - a bug here must not strand the entry
                log.exception("worker %s: running %s broke", self.name, entry.job_id)
                outcome = Deferred(RUNNER_BROKE_SECONDS, f"{type(exc).__name__}: {exc}")
        finally:
            release()
        try:
            await self.settle(entry, outcome)
        finally:
            self.held.pop(entry.job_id, None)  # only now: until settled, the job is counted as held
            self._busy.discard(task)
        return 1.0

    async def _take(self, entry: QueuedJob, release: Callable[[], None]) -> Outcome:
        if not self.alive:
            return Requeued("the worker stops")
        if self.engine.state is EngineState.UNLOADED:
            await self.load_engine()
        if self.engine.state is not EngineState.READY:
            return Requeued("the worker's engine cannot run it")
        held = self.held.setdefault(entry.job_id, HeldJob(entry.job_id, entry.steps))
        turn = Turn(self.device, self._device_turn, release, lambda: not self.alive, self._interrupt,
                    self._run_deadline, lambda reason: self.go_defunct(reason, restart=True))
        outcome = await self.runner.run(entry, held, turn)
        if isinstance(outcome, Finished) and outcome.job is not None:
            done = outcome.job
            if done.status is JobStatus.COMPLETED and done.run_seconds is not None:
                self.recent_edits.append((done.request.num_inference_steps, done.run_seconds, held.per_step_seconds()))
        return outcome

    async def settle(self, entry: QueuedJob, outcome: Outcome) -> None:
        """The one place an entry is closed, deferred or queued again, from what running its job came to.
        Downloading: the prefetcher holds it. Interrupted: it stays open (the next start, or its lease)."""
        what = f"settling {entry.job_id} ({type(outcome).__name__})"
        if isinstance(outcome, Finished):
            await keep_trying(lambda: self.queue.done(entry), what)
        elif isinstance(outcome, Deferred):
            if outcome.store_retry:
                self.metrics.store_retries.inc()
                await keep_trying(lambda: self.store.count_store_retry(entry.job_id), what)
            await keep_trying(lambda: self.queue.defer(entry, outcome.delay), what)
        elif isinstance(outcome, Requeued):
            await keep_trying(lambda: self.queue.requeue(entry), what)

    async def _queue_trouble(self, exc: Exception, backoff: float) -> None:
        message = exc.message if isinstance(exc, StorageUnavailable) else f"{type(exc).__name__}: {exc}"
        if self.queue_error is None:
            log.error("worker %s: %s; retrying every %.0fs at most", self.name, message, QUEUE_RETRY_MAX,
                      exc_info=not isinstance(exc, StorageUnavailable))
        self.queue_error = message
        await asyncio.sleep(backoff)

    def _queue_back(self) -> None:
        if self.queue_error is not None:
            log.info("worker %s: the queue is reachable again", self.name)
            self.queue_error = None
