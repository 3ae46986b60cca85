"""Runtime: the composition root that builds, starts and stops the long-lived parts of one process, by role.

Roles: ``all`` (one host, JOB_BACKEND=sqlite: doors and workers in one process), ``door`` (JOB_BACKEND=redis: the
doors, with the workers elsewhere) and ``worker`` (``kontext-worker``: workers only). Each role is a short list of
parts (kontext/parts.py), started in order and stopped in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Literal, Optional

from kontext.delivery.notifier import CallbackNotifier, Deliverer
from kontext.errors import StartupError, StorageUnavailable
from kontext.jobs.admission import AdmissionControl
from kontext.jobs.heartbeat import Heartbeat, RemoteWorkers
from kontext.jobs.inputs import InputPrefetcher
from kontext.jobs.pool import WorkerPool
from kontext.jobs.record import JobRecord
from kontext.jobs.runner import Engine
from kontext.jobs.service import EditService
from kontext.jobs.workers_view import WorkersView
from kontext.jobs.upkeep import Upkeep
from kontext.jobs.worker import QUEUE_RETRY_MAX, Worker
from kontext.metrics import Metrics
from kontext.parts import Delivery, Parts, build_delivery, build_storage, open_storage
from kontext.settings import Settings

log = logging.getLogger(__name__)

Role = Literal["all", "door", "worker"]
RESEND_SECONDS = 30.0
ORPHAN_CHECK_SECONDS = 30.0
"""How often a door of a shared queue looks for stored jobs that were never queued."""


class Runtime:
    """Owns everything the doors and workers of one process share.

    ``engine``/``engines`` and ``sender`` may be injected (tests use fakes); by default one real ``KontextEngine`` per
    device of KONTEXT_DEVICES and a ``CallbackSender``. Shutdown (``stop``): stop accepting (503) -> the workers
    drain (the running job gets the grace period, then is interrupted) -> background tasks stop -> downloads stop
    and callbacks under way finish (bounded) -> the HTTP session and the store close. With editing disabled there
    is no worker: queued jobs wait (and their status answers) until editing is enabled again.
    """

    def __init__(self, settings: Settings, *, engine: Optional[Engine] = None, engines: Optional[list[Engine]] = None,
                 sender: Optional[Deliverer] = None, role: Optional[Role] = None) -> None:
        self.settings = settings
        self.role: Role = role or ("door" if settings.job_backend == "redis" else "all")
        self.engines: list[Engine] = engines or ([engine] if engine is not None else [])
        self._sender = sender
        self.process = settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.storage = build_storage(settings, self.process)
        self.store, self.files, self.queue, self.redis = (self.storage.store, self.storage.files,
                                                          self.storage.queue, self.storage.redis)
        self.metrics = Metrics()
        self.delivery: Optional[Delivery] = None
        self.workers: Optional[WorkerPool] = None
        self.remote: Optional[RemoteWorkers] = None
        self.upkeep = Upkeep(settings, self.store, self.queue, self.files)
        self.restart = asyncio.Event()
        """Set when the process must be restarted by its supervisor (a hung device); ``restart_reason`` says why."""
        self.restart_reason: Optional[str] = None
        self.backend_error: Optional[str] = None
        """Why the shared store cannot be reached (a worker keeps trying), or None."""
        self._service: Optional[EditService] = None
        self._parts = Parts()
        self._queue_depth = 0
        local = self.queue if self.role == "all" else None
        self.metrics.watch_queue(lambda: (len(local) if local is not None else self._queue_depth)  # type: ignore[arg-type]
                                 + (len(self.workers.waiting_for_device()) if self.workers is not None else 0))

    @property
    def service(self) -> EditService:
        if self._service is None:
            raise RuntimeError("runtime is not started")
        return self._service

    @property
    def notifier(self) -> Optional[CallbackNotifier]:
        return self.delivery.notifier if self.delivery is not None else None

    @property
    def prefetcher(self) -> Optional[InputPrefetcher]:
        return self.delivery.prefetcher if self.delivery is not None else None

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Doors fail fast (exit 2) when the store is unusable; a worker keeps trying in the background. A start
        that fails stops what it started (the store always closes)."""
        log.info("%s", describe_rules(self.settings))
        try:
            if self.role == "all":
                await self._start_one_host()
            elif self.role == "door":
                await self._start_door()
            else:
                self._start_worker()
        except BaseException:
            await self._parts.close()
            raise

    async def _start_one_host(self) -> None:
        await open_storage(self.storage, self.settings, self._parts)
        self.delivery = self._delivery()
        self._build_workers(self.delivery)
        self._serve(self.workers)
        await self.upkeep.recover()  # a shared queue recovers by leases instead (kontext/jobs/redis_queue.py)
        await self.delivery.notifier.resend_pending()
        self._start_workers()
        self._parts.task("retention-sweep", self._every(self.settings.retention_sweep_seconds, self.upkeep.sweep))

    async def _start_door(self) -> None:
        await open_storage(self.storage, self.settings, self._parts)
        self.remote = RemoteWorkers(self.redis)
        self._parts.task("remote-workers", self.remote.run())
        self._serve(self.remote)
        self._parts.task("retention-sweep", self._every(self.settings.retention_sweep_seconds, self.upkeep.sweep))
        self._parts.task("queue-depth", self._watch_queue())
        self._parts.task("orphan-requeue", self._every(ORPHAN_CHECK_SECONDS, self._requeue_orphans))

    def _start_worker(self) -> None:
        self._parts.on_stop("storage", self._close_storage)
        self.delivery = self._delivery(shared=True)
        self._build_workers(self.delivery)
        self._parts.task("bring-up", self._bring_up_worker())

    def _delivery(self, *, shared: bool = False) -> Delivery:
        return build_delivery(self.settings, self.storage, self.metrics, self._parts, on_finished=self._job_finished,
                              sender=self._sender, shared=shared)

    def _serve(self, workers: Optional[WorkersView]) -> None:
        """The service every door shares; its admission learns edit times here, or from other hosts' heartbeats."""
        settings = self.settings
        admission = AdmissionControl(settings.admission_deadline_seconds, settings.admission_window,
                                     margin_seconds=settings.admission_margin_seconds,
                                     samples_source=workers.edit_samples if workers is not None else None)
        self._service = EditService(settings, self.store, self.queue, self.files, workers=workers,
                                    prefetcher=self.prefetcher, metrics=self.metrics, admission=admission)

    def _build_workers(self, delivery: Delivery) -> None:
        """One worker per engine, one engine per device (none with editing disabled)."""
        settings = self.settings
        self.upkeep.finisher, self.upkeep.prefetcher = delivery.finisher, delivery.prefetcher
        if not self.engines and settings.enable_kontext_edit:
            from kontext.engine.devices import resolve_devices  # torch is heavy: import on demand
            from kontext.engine.engine import EngineConfig, KontextEngine

            devices = resolve_devices(settings.kontext_devices)
            self.engines = [KontextEngine(EngineConfig.from_settings(settings, device)) for device in devices]
        if not self.engines:
            return
        prefix = f"{self.process}/" if self.role == "worker" else ""  # names unique across hosts
        self.workers = WorkerPool([
            Worker(f"{prefix}w{index}", engine, self.store, self.queue, self.files, delivery.finisher,
                   delivery.prefetcher, max_pixels=settings.max_image_pixels, max_attempts=settings.max_attempts,
                   run_deadline=settings.run_deadline, metrics=self.metrics, on_hung=self._hung,
                   edit_window=settings.admission_window)
            for index, engine in enumerate(self.engines)])

    def _start_workers(self) -> None:
        if self.workers is not None:
            workers = self.workers
            workers.start(eager=self.settings.kontext_load == "eager")
            self._parts.on_stop("workers", lambda: workers.drain(0))  # (``quiesce`` drained them with the grace)

    async def _bring_up_worker(self) -> None:
        """kontext-worker: reach Redis (retrying, and saying why), then load the engines and take jobs."""
        backoff = 1.0
        while True:
            try:
                await self.store.open()
                await self.queue.open()
                break
            except (StorageUnavailable, StartupError) as exc:  # away, or too old: retry, and say why
                message = exc.message if isinstance(exc, StorageUnavailable) else str(exc)
                if self.backend_error != message:
                    log.error("%s (REDIS_URL %s); retrying every %.0fs at most", message, self.settings.redis_url,
                              QUEUE_RETRY_MAX)
                self.backend_error = message
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, QUEUE_RETRY_MAX)
        if self.backend_error is not None:
            log.info("Redis reachable: starting the workers")
        self.backend_error = None
        self.queue.start_renewing()
        self._parts.task("queue-depth", self._watch_queue())  # this worker's /metrics shows the shared queue too
        assert self.delivery is not None
        await self.delivery.notifier.resend_pending()
        if self.workers is not None:
            heartbeat = Heartbeat(self.redis, self.process, self.workers)
            self._start_workers()
            # (after its task ended, so no late beat writes the fields back)
            self._parts.task("heartbeat", heartbeat.run(), then=heartbeat.withdraw)
        self._parts.task("callback-resend", self._every(RESEND_SECONDS, self.delivery.notifier.resend_pending,
                                                        first_after=RESEND_SECONDS))

    async def _close_storage(self) -> None:
        from kontext.parts import close_storage

        await close_storage(self.storage)

    def _hung(self, reason: str) -> None:
        """A worker's device overran the run deadline: no code here can free it, so the process asks to restart."""
        self.restart_reason = reason
        self.restart.set()

    def _job_finished(self, job: JobRecord) -> None:
        if self._service is not None:
            self._service.finished(job)

    def count_rejection(self, code: str) -> None:
        """Every refused request, from any door, by error code (the metrics' one entry point)."""
        self.metrics.jobs_rejected.labels(code).inc()

    def health(self) -> dict[str, Any]:
        """kontext-worker's /health: the store connection and every worker."""
        workers = self.workers.describe()["workers"] if self.workers else []
        problem = self.backend_error or next((w["queue_error"] for w in workers if w.get("queue_error")), None)
        return {"status": "degraded" if problem or self.restart.is_set() else "ok", "role": self.role,
                "process": self.process, "redis": {"reachable": problem is None, "error": problem},
                "workers": workers, "profile": self.settings.timing()}

    # -- stop -----------------------------------------------------------------------------

    async def quiesce(self, grace_seconds: float) -> None:
        """Stop accepting jobs (503), then drain the workers: the running job gets ``grace_seconds``."""
        if self._service is not None:
            self._service.accepting = False
        if self.workers is not None:
            await self.workers.drain(grace_seconds)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        await self.quiesce(grace_seconds)
        await self._parts.close()

    async def __aenter__(self) -> "Runtime":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- background work --------------------------------------------------------------------

    async def _every(self, seconds: float, work: Any, *, first_after: float = 0.0) -> None:
        """``work()`` every ``seconds``; a round that fails is logged, and the next one runs all the same."""
        await asyncio.sleep(first_after)
        while True:
            try:
                await work()
            except Exception:  # noqa: BLE001 - the store or Redis away: the next round tries again
                log.warning("%s failed; trying again in %.0fs", getattr(work, "__name__", "a periodic task"), seconds,
                            exc_info=True)
            await asyncio.sleep(seconds)

    async def _requeue_orphans(self) -> None:
        """Doors of a shared queue, one at a time: jobs stored but never queued are queued again."""
        queue: Any = self.queue
        if await queue.lead("orphan-requeue", ORPHAN_CHECK_SECONDS * 0.9):
            await self.upkeep.requeue_orphans(await queue.job_ids())

    async def _watch_queue(self) -> None:
        """A shared queue's size is a network call: the queue-depth gauge reads this copy, kept current here
        (an in-memory queue's gauge reads its length directly)."""
        while True:
            try:
                self._queue_depth = await self.queue.size()
            except Exception as exc:  # noqa: BLE001 - the gauge keeps its last value; the workers say why
                log.debug("queue depth unknown: %s", exc)
            await asyncio.sleep(1.0)


def describe_rules(settings: Settings) -> str:
    """The start-up log's line on what is in force: profile, timing rules, recipe, model, where jobs live."""
    deadline = settings.admission_deadline_seconds
    return (f"profile {settings.kontext_profile}: callbacks no earlier than {settings.callback_not_before_seconds:g}s "
            f"after arrival; admission deadline " + (f"{deadline:g}s (+{settings.admission_margin_seconds:g}s upload "
            "margin)" if deadline else "off") + f"; recipe {settings.kontext_recipe}; model "
            f"{settings.kontext_model_path} on {settings.kontext_devices}; jobs in {settings.job_backend}")
