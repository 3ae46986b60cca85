"""Runtime: the composition root that builds, starts and stops the long-lived parts of one process.

Roles: ``all`` (one host, JOB_BACKEND=sqlite: doors and workers in one process), ``door`` (JOB_BACKEND=
redis: the doors, with the workers elsewhere) and ``worker`` (``kontext-worker``: workers only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any, Coroutine, Literal, Optional, Union

import aiohttp

from kontext.delivery.callbacks import CallbackSender
from kontext.delivery.fetch import fetch_image
from kontext.delivery.guard import make_guarded_session
from kontext.delivery.notifier import CallbackNotifier, Deliverer
from kontext.errors import StartupError, StorageUnavailable
from kontext.jobs.admission import AdmissionControl
from kontext.jobs.finish import JobFinisher
from kontext.jobs.heartbeat import Heartbeat, RemoteWorkers
from kontext.jobs.inputs import InputPrefetcher
from kontext.jobs.queue import JobQueue, RunQueue
from kontext.jobs.record import JobRecord
from kontext.jobs.service import EditService
from kontext.jobs.store import JobStore, SqliteJobStore
from kontext.jobs.pool import WorkerPool
from kontext.jobs.runner import Engine
from kontext.jobs.worker import QUEUE_RETRY_MAX, Worker
from kontext.media.files import ImageFiles, ImageStore
from kontext.metrics import Metrics
from kontext.settings import Settings

log = logging.getLogger(__name__)

Role = Literal["all", "door", "worker"]
RESEND_SECONDS = 30.0
ORPHAN_CHECK_SECONDS = 30.0
"""How often a door of a shared queue looks for stored jobs that were never queued."""
PREFETCH_CONCURRENCY = 4
"""image_url downloads at once (each bounded by IMAGE_URL_TIMEOUT_SECONDS and MAX_IMAGE_BYTES)."""


class Runtime:
    """Owns everything the doors and workers of one process share.

    ``engine``/``engines`` and ``sender`` may be injected (tests use fakes); by default one real
    ``KontextEngine`` per device of KONTEXT_DEVICES and a ``CallbackSender`` are built from the
    settings. Shutdown (``stop``), in order: stop accepting (503) -> the workers drain (no new job;
    the running one gets the grace period, then is interrupted) -> downloads and background tasks
    stop -> callbacks under way finish (bounded) -> the HTTP session and the store close. Nothing
    touches the store after that. With editing disabled there is no worker: queued jobs wait (and
    their status answers) until editing is enabled again.
    """

    def __init__(self, settings: Settings, *, engine: Optional[Engine] = None, engines: Optional[list[Engine]] = None,
                 sender: Optional[Deliverer] = None, role: Optional[Role] = None) -> None:
        self.settings = settings
        self.role: Role = role or ("door" if settings.job_backend == "redis" else "all")
        self.engines: list[Engine] = engines or ([engine] if engine is not None else [])
        self._sender = sender
        self.process = settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.redis: Any = None
        self.store: JobStore
        self.files: ImageStore
        self.queue: RunQueue
        if settings.job_backend == "redis":
            from kontext.jobs.redis_queue import RedisJobQueue
            from kontext.jobs.redis_store import RedisJobStore
            from kontext.media.redis_files import RedisImageStore
            from kontext.redis_client import connect

            self.redis = connect(settings.redis_url)
            self.store = RedisJobStore(self.redis)
            self.files = RedisImageStore(self.redis, retention_seconds=settings.retention_hours * 3600)
            self.queue = RedisJobQueue(self.redis, consumer=self.process, lease_seconds=settings.redis_lease_seconds)
        else:
            self.store = SqliteJobStore(settings.database_path)
            self.files = ImageFiles(settings.inputs_dir, settings.edits_dir)
            self.queue = JobQueue()
        self.metrics = Metrics()
        self._queue_depth = 0
        local = self.queue if isinstance(self.queue, JobQueue) else None
        self._session: Optional[aiohttp.ClientSession] = None
        self._tasks: list[asyncio.Task[None]] = []
        self.workers: Optional[WorkerPool] = None
        self.metrics.watch_queue(lambda: (len(local) if local is not None else self._queue_depth)
                                 + (len(self.workers.waiting_for_device()) if self.workers is not None else 0))
        self.remote: Optional[RemoteWorkers] = None
        self.heartbeat: Optional[Heartbeat] = None
        self.prefetcher: Optional[InputPrefetcher] = None
        self.notifier: Optional[CallbackNotifier] = None
        self.restart = asyncio.Event()
        """Set when the process must be restarted by its supervisor (a hung device); ``restart_reason`` says why."""
        self.restart_reason: Optional[str] = None
        self.backend_error: Optional[str] = None
        """Why the shared store cannot be reached (a worker keeps trying), or None."""
        self._service: Optional[EditService] = None

    @property
    def service(self) -> EditService:
        if self._service is None:
            raise RuntimeError("runtime is not started")
        return self._service

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Doors fail fast (exit 2) when the store is unusable; a worker keeps trying in the background."""
        settings = self.settings
        log.info("%s", describe_rules(settings))
        if self.role == "worker":
            self._build_workers()
            self._spawn(self._bring_up_worker(), "bring-up")
            return
        await self._open_backend()
        finisher = self._build_delivery() if self.role == "all" else None
        if self.role == "all":
            assert finisher is not None
            self._build_workers(finisher)
        else:
            self.remote = RemoteWorkers(self.redis)
            self._spawn(self.remote.run(), "remote-workers")
        admission = AdmissionControl(settings.admission_deadline_seconds, settings.admission_window,
                                     margin_seconds=settings.admission_margin_seconds,
                                     samples_source=self.remote.edit_samples if self.remote else None)
        self._service = EditService(settings, self.store, self.queue, self.files,
                                    workers=self.workers or self.remote, prefetcher=self.prefetcher,
                                    finisher=finisher, metrics=self.metrics, admission=admission)
        if self.role == "all":  # a shared queue recovers by leases instead (kontext/jobs/redis_queue.py)
            await self._service.recover()
        if self.notifier is not None:
            await self.notifier.resend_pending()
        if self.workers is not None:
            self.workers.start(eager=settings.kontext_load == "eager")
        self._spawn(self._sweep_forever(), "retention-sweep")
        if self.queue.shared:
            self._spawn(self._watch_queue(), "queue-depth")
        if self.role == "door":
            self._spawn(self._requeue_orphans_forever(), "orphan-requeue")

    async def _open_backend(self) -> None:
        settings = self.settings
        if settings.job_backend == "redis":
            try:
                await self.store.open()
                await self.queue.open()
            except StorageUnavailable as exc:
                raise StartupError(f"{exc.message}. Check REDIS_URL ({settings.redis_url}) and that Redis runs") from None
            return
        try:
            removed = await asyncio.to_thread(self.files.prepare)
            await asyncio.to_thread(_probe_writable, settings.data_dir)
            await self.store.open()
        except (OSError, StorageUnavailable) as exc:
            raise StartupError(f"data directory {settings.data_dir} is not usable: {exc}. Fix DATA_DIR (it must be "
                               "a writable directory with free space).") from None
        if removed:
            log.warning("removed %d half-written file(s) left by an earlier crash", removed)

    def _build_delivery(self) -> JobFinisher:
        """Outbound traffic (one guarded session), callbacks, how jobs end, and downloads ahead of workers."""
        settings = self.settings
        self._session = session = make_guarded_session(
            allow_private=settings.outbound_allow_private,
            timeout=max(settings.callback_timeout_seconds, settings.image_url_timeout_seconds),
        )
        sender = self._sender or CallbackSender(session, timeout=settings.callback_timeout_seconds,
                                                allow_private=settings.outbound_allow_private)
        self.notifier = CallbackNotifier(
            self.store, self.files, sender, image_url=settings.image_url, metrics=self.metrics,
            not_before_seconds=settings.callback_not_before_seconds,
            interrupted_after=None if self.role == "all" else settings.callback_timeout_seconds + 30,
        )

        async def download(url: str) -> bytes:
            return await fetch_image(session, url, max_bytes=settings.max_image_bytes,
                                     timeout=settings.image_url_timeout_seconds,
                                     allow_private=settings.outbound_allow_private)

        finisher = JobFinisher(self.store, self.files, self.metrics, self._job_finished)
        self.prefetcher = InputPrefetcher(download, self.store, self.files, self.queue, finisher,
                                          concurrency=PREFETCH_CONCURRENCY, max_bytes=settings.max_image_bytes,
                                          max_pixels=settings.max_image_pixels)
        return finisher

    def _build_workers(self, finisher: Optional[JobFinisher] = None) -> None:
        """One worker per engine, one engine per device (none with editing disabled)."""
        settings = self.settings
        if not self.engines and settings.enable_kontext_edit:
            from kontext.engine.devices import resolve_devices  # torch is heavy: import on demand
            from kontext.engine.engine import EngineConfig, KontextEngine

            devices = resolve_devices(settings.kontext_devices)
            self.engines = [KontextEngine(EngineConfig.from_settings(settings, device)) for device in devices]
        if not self.engines:
            return
        finisher = finisher or self._build_delivery()
        assert self.prefetcher is not None
        prefix = f"{self.process}/" if self.role == "worker" else ""  # names unique across hosts
        self.workers = WorkerPool([
            Worker(f"{prefix}w{index}", engine, self.store, self.queue, self.files, finisher, self.prefetcher,
                   max_pixels=settings.max_image_pixels, max_attempts=settings.max_attempts,
                   run_deadline=settings.run_deadline, metrics=self.metrics, on_hung=self._hung)
            for index, engine in enumerate(self.engines)])

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
        self._spawn(self._watch_queue(), "queue-depth")  # this worker's /metrics shows the shared queue too
        if self.notifier is not None:
            await self.notifier.resend_pending()
        if self.workers is not None:
            self.heartbeat = Heartbeat(self.redis, self.process, self.workers)
            self._spawn(self.heartbeat.run(), "heartbeat")
            self.workers.start(eager=self.settings.kontext_load == "eager")
        self._spawn(self._resend_forever(), "callback-resend")

    def _hung(self, reason: str) -> None:
        """A worker's device overran the run deadline: no code here can free it, so the process asks to restart."""
        self.restart_reason = reason
        self.restart.set()

    def _job_finished(self, job: JobRecord) -> None:
        if self._service is not None:
            self._service.finished(job)
        if self.notifier is not None:
            self.notifier.schedule(job)

    def count_rejection(self, code: str) -> None:
        """Every refused request, from any door, by error code (the metrics' one entry point)."""
        self.metrics.jobs_rejected.labels(code).inc()

    def health(self) -> dict[str, Any]:
        """kontext-worker's /health: the store connection and every worker."""
        workers = self.workers.describe()["workers"] if self.workers else []
        problem = self.backend_error or next((w["queue_error"] for w in workers if w.get("queue_error")), None)
        return {"status": "degraded" if problem else "ok", "role": self.role, "process": self.process,
                "redis": {"reachable": problem is None, "error": problem}, "workers": workers}

    # -- stop -----------------------------------------------------------------------------

    async def quiesce(self, grace_seconds: float) -> None:
        """Stop accepting jobs (503), then drain the workers: the running job gets ``grace_seconds``."""
        if self._service is not None:
            self._service.accepting = False
        if self.workers is not None:
            await self.workers.drain(grace_seconds)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        await self.quiesce(grace_seconds)
        if self.prefetcher is not None:
            await self.prefetcher.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.heartbeat is not None:  # after its task ended, so no late beat writes the fields back
            await self.heartbeat.withdraw()
        if self.notifier is not None:
            await self.notifier.drain(timeout=self.settings.callback_timeout_seconds)
        if self._session is not None:
            await self._session.close()
        await self.queue.close()
        await self.store.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def __aenter__(self) -> "Runtime":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.service.sweep()
            except Exception:  # noqa: BLE001 - a failed sweep must not stop the next one
                log.exception("retention sweep failed")
            await asyncio.sleep(self.settings.retention_sweep_seconds)

    async def _requeue_orphans_forever(self) -> None:
        """Doors of a shared queue, one at a time: jobs stored but never queued are queued again."""
        from kontext.jobs.redis_queue import RedisJobQueue

        queue = self.queue
        assert isinstance(queue, RedisJobQueue)
        while True:
            try:
                if await queue.lead("orphan-requeue", ORPHAN_CHECK_SECONDS * 0.9):
                    await self.service.requeue_orphans(await queue.job_ids())
            except Exception:  # noqa: BLE001 - Redis away: the next round tries again
                log.exception("the orphan check failed")
            await asyncio.sleep(ORPHAN_CHECK_SECONDS)

    async def _resend_forever(self) -> None:
        """A worker that stopped while its callback waited (CALLBACK_NOT_BEFORE_SECONDS) leaves it pending:
        any worker process sends it; the store's claim makes sure only one POSTs."""
        while True:
            await asyncio.sleep(RESEND_SECONDS)
            if self.notifier is not None:
                try:
                    await self.notifier.resend_pending()
                except Exception:  # noqa: BLE001 - Redis away: the next round tries again
                    log.warning("resending pending callbacks failed; trying again in %.0fs", RESEND_SECONDS,
                                exc_info=True)

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


def _probe_writable(directory: Union[str, "os.PathLike[str]"]) -> None:
    """Write, sync and remove a small file: catches read-only mounts and full disks at start."""
    from kontext.media.files import remove_quietly, write_atomic

    probe = Path(directory) / ".write-probe"
    write_atomic(probe, b"kontext-miner" * 64)
    remove_quietly(probe)
