"""Running one job: its input, the engine's three stages and its end, said as an ``Outcome`` (kontext/jobs/outcomes.py).

prepare (CPU, any thread) -> the device's turn: recorded as started, then denoise on the worker's device thread,
within the run deadline -> encode (CPU) -> the result stored and the job finished. The queue is not touched here:
the worker settles the entry from the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Union

from kontext.engine.engine import EngineState
from kontext.engine.recipes import EditParams
from kontext.errors import StorageUnavailable
from kontext.jobs import chaining
from kontext.jobs.device import DeviceThread
from kontext.jobs.finish import JobFinisher
from kontext.jobs.inputs import InputPrefetcher
from kontext.jobs.outcomes import Deferred, Downloading, Finished, Interrupted, Outcome, Requeued
from kontext.jobs.queue import QueuedJob
from kontext.jobs.record import JobRecord, now
from kontext.jobs.store import JobStore
from kontext.media.files import ImageStore
from protocol import ImageSource

log = logging.getLogger(__name__)

REFERENCE_WAIT_SECONDS = 0.5
"""A chained job whose reference still runs is deferred this long, then looked at again."""
RETRY_SECONDS = 5.0
"""A job the store could not update is deferred this long before it is tried again."""


class Engine(Protocol):
    """What a worker needs of an engine (``KontextEngine``, or a test double): its state, loading, and the three
    stages of an edit (kontext/engine/stages.py)."""

    state: EngineState
    error: Optional[str]

    def load(self) -> None: ...
    def prepare(self, image_bytes: bytes, params: EditParams, *, max_pixels: int) -> Any: ...
    def denoise(self, prepared: Any, *, on_step: Optional[Callable[[int, int], None]] = None) -> Any: ...
    def encode(self, denoised: Any) -> Any: ...
    def describe(self) -> dict[str, Any]: ...


class JobFailure(Exception):
    """A job-level failure whose message is safe to show to the caller."""


class EditInterrupted(Exception):
    """Raised from the step callback on the device thread when a shutdown cuts the running edit off."""


class DeviceHung(Exception):
    """The pipeline call overran the run deadline: a hung kernel cannot be stopped in-process."""


@dataclass
class HeldJob:
    """A job a worker holds: preparing, waiting for the device, or on it (``step`` of ``steps``)."""

    job_id: str
    steps: int
    step: int = 0
    on_device: bool = False
    step_times: tuple[float, float] = (0.0, 0.0)
    """``time.monotonic()`` at its first and its last denoising step: how long a step takes, for the estimate."""

    def per_step_seconds(self) -> Optional[float]:
        first, last = self.step_times
        return (last - first) / (self.step - 1) if self.step >= 2 and last > first else None


@dataclass
class Turn:
    """What one job needs of its worker: the device (its thread, and the turn that orders the jobs waiting for it),
    the lookahead slot to give up once it has the device, the stop switches and the run deadline."""

    device: DeviceThread
    device_turn: asyncio.Lock
    reached_device: Callable[[], None]
    stopping: Callable[[], bool]
    interrupt: threading.Event
    deadline: Callable[[int], float]
    on_hung: Callable[[str], None]


class JobRunner:
    """Knows the store, the images, the finisher, the prefetcher and the engine's stages; not the queue."""

    def __init__(self, worker: str, engine: Engine, store: JobStore, files: ImageStore, finisher: JobFinisher,
                 prefetcher: InputPrefetcher, *, max_pixels: int, max_attempts: int) -> None:
        self.worker = worker
        self.engine = engine
        self.store = store
        self.files = files
        self.finisher = finisher
        self.prefetcher = prefetcher
        self.max_pixels = max_pixels
        self.max_attempts = max_attempts

    async def run(self, entry: QueuedJob, held: HeldJob, turn: Turn) -> Outcome:
        """Run the entry's job to an outcome. A store that refuses a write defers the job (RETRY_SECONDS); a
        cancellation (a shutdown, or the worker going defunct) propagates and leaves the entry open."""
        try:
            job = await self.store.get(entry.job_id)
            if job is None or job.status.finished or job.swept_at is not None:
                return Finished()
            held.steps = job.request.num_inference_steps
            reason = job.cut_off_too_often(self.max_attempts) if entry.redelivered else None
            if reason is not None:  # its worker died mid-run as often as allowed: as a restart would, fail it
                return Finished(await self.finisher.fail(job, reason))
            image = await self._input(job, entry)
            if not isinstance(image, bytes):
                return image
            return await self._edit(job, image, held, turn)
        except StorageUnavailable as exc:
            log.warning("worker %s: the store refused a write for %s (%s); tried again in %gs", self.worker,
                        entry.job_id, exc.message, RETRY_SECONDS)
            return Deferred(RETRY_SECONDS, f"store: {exc.message}", store_retry=held.on_device)
        except EditInterrupted:
            return Interrupted()

    async def _edit(self, job: JobRecord, image: bytes, held: HeldJob, turn: Turn) -> Outcome:
        """The engine's three stages, the result stored, the job finished."""
        job = job.evolve(worker=self.worker)
        try:
            prepared = await self._stage(self.engine.prepare, image, EditParams.from_request(job.request),
                                         max_pixels=self.max_pixels)
            async with turn.device_turn:  # jobs take the device in the order they were prepared
                turn.reached_device()  # the next job may be taken and prepared while this one denoises
                if turn.stopping():
                    return Requeued("the worker stops: not started")
                job = job.evolve(started_at=now(), attempts=job.attempts + 1)
                if not await self.store.mark_started(job.id, started_at=job.started_at or 0.0,
                                                     attempts=job.attempts, worker=self.worker):
                    return Finished()  # it finished meanwhile (another worker ran it)
                held.on_device = True
                denoised = await self._denoise(job, prepared, held, turn)
            output = await self._stage(self.engine.encode, denoised)
            await self._store_result(job, output.png)
        except JobFailure as failure:
            return Finished(await self.finisher.fail(job, str(failure)))
        except DeviceHung as hung:
            turn.on_hung(str(hung))
            return Finished(await self.finisher.fail(job, str(hung)))
        except (asyncio.CancelledError, EditInterrupted, StorageUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure still ends the job
            log.exception("job %s failed", job.id)
            return Finished(await self.finisher.fail(job, f"internal error: {type(exc).__name__}: {exc}"))
        return Finished(await self.finisher.complete(job, output))

    async def _store_result(self, job: JobRecord, png: bytes) -> None:
        try:
            await self.files.write_result(job.id, png)
        except StorageUnavailable as exc:  # disk full, read-only, Redis away: the temp file is already gone
            raise JobFailure(f"could not store the result PNG: {exc.message}") from None

    async def _denoise(self, job: JobRecord, prepared: Any, held: HeldJob, turn: Turn) -> Any:
        def on_step(step: int, total: int) -> None:
            if turn.interrupt.is_set():
                raise EditInterrupted(f"job {job.id} cut off by a shutdown")
            held.step = step
            clock = time.monotonic()
            held.step_times = (clock if step == 1 else held.step_times[0], clock)

        deadline = turn.deadline(held.steps)
        call = turn.device.submit(lambda: self.engine.denoise(prepared, on_step=on_step))
        try:
            return await asyncio.wait_for(asyncio.shield(call), deadline)
        except asyncio.TimeoutError:
            call.add_done_callback(_retrieved)  # it may end one day: its outcome is no one's any more
            raise DeviceHung(f"the edit did not finish within its run deadline of {deadline:g}s: the device may be "
                             "hung; the worker left the rotation and the process restarts") from None
        except ValueError as exc:  # the recipe refused the image
            raise JobFailure(f"input image: {exc}") from None

    async def _stage(self, stage: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A CPU stage (prepare, encode) off the event loop; the recipe refusing the image is the job's failure."""
        try:
            return await asyncio.to_thread(stage, *args, **kwargs)
        except ValueError as exc:
            raise JobFailure(f"input image: {exc}") from None

    async def _input(self, job: JobRecord, entry: QueuedJob) -> Union[bytes, Outcome]:
        """The bytes to edit, or the outcome when there are none yet: a reference still running (deferred), an
        image_url to download (handed to the prefetcher), or none at all (failed)."""
        source = job.image_source
        if source is ImageSource.REFERENCE_EDIT:
            reference = await self.store.get(job.request.reference_job_id or "")
            try:
                run_input = await chaining.input_at_run(job, reference, self.files)
            except chaining.ChainBroken as exc:
                return Finished(await self.finisher.fail(job, str(exc)))
            if run_input.wait_for is not None:
                return Deferred(REFERENCE_WAIT_SECONDS, f"waits for its reference {run_input.wait_for}")
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
            return Downloading()
        return Finished(await self.finisher.fail(job, "the uploaded image is missing from the data directory"))


def _retrieved(call: "asyncio.Future[Any]") -> None:
    """Take a future's exception, so a late end of a call given up on is not logged as never retrieved."""
    if not call.cancelled():
        call.exception()
