"""Runtime: the composition root that builds, starts and stops the long-lived parts of one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Coroutine, Optional

import aiohttp

from kontext.delivery.callbacks import CallbackSender
from kontext.delivery.fetch import fetch_image
from kontext.delivery.guard import make_guarded_session
from kontext.delivery.notifier import CallbackNotifier, Deliverer
from kontext.errors import StartupError
from kontext.jobs.finish import JobFinisher
from kontext.jobs.inputs import InputPrefetcher
from kontext.jobs.queue import JobQueue
from kontext.jobs.record import JobRecord
from kontext.jobs.service import EditService
from kontext.jobs.store import SqliteJobStore
from kontext.jobs.worker import Engine, Worker, WorkerPool
from kontext.media.files import ImageFiles
from kontext.metrics import Metrics
from kontext.settings import Settings

log = logging.getLogger(__name__)

PREFETCH_CONCURRENCY = 4
"""image_url downloads at once (each bounded by IMAGE_URL_TIMEOUT_SECONDS and MAX_IMAGE_BYTES)."""


class Runtime:
    """Owns everything the doors share; one per process.

    ``engine``/``engines`` and ``sender`` may be injected (tests use fakes); by default one real
    ``KontextEngine`` per device of KONTEXT_DEVICES and a ``CallbackSender`` are built from the settings. Shutdown (``stop``), in
    order: stop accepting (503) -> the workers drain (no new job; the running one gets the grace
    period, then is interrupted) -> downloads and background tasks stop -> callbacks under way
    finish (bounded) -> the HTTP session and the store close. Nothing touches the store after
    that. With editing disabled there is no worker: queued jobs wait (and their status answers)
    until editing is enabled again.
    """

    def __init__(self, settings: Settings, *, engine: Optional[Engine] = None, engines: Optional[list[Engine]] = None,
                 sender: Optional[Deliverer] = None) -> None:
        self.settings = settings
        self.engines: list[Engine] = engines or ([engine] if engine is not None else [])
        self._sender = sender
        self.store = SqliteJobStore(settings.database_path)
        self.files = ImageFiles(settings.inputs_dir, settings.edits_dir)
        self.queue = JobQueue()
        self.metrics = Metrics()
        self.metrics.watch_queue(lambda: len(self.queue))
        self._session: Optional[aiohttp.ClientSession] = None
        self._tasks: list[asyncio.Task[None]] = []
        self.workers: Optional[WorkerPool] = None
        self.prefetcher: Optional[InputPrefetcher] = None
        self.notifier: Optional[CallbackNotifier] = None
        self._service: Optional[EditService] = None

    @property
    def service(self) -> EditService:
        if self._service is None:
            raise RuntimeError("runtime is not started")
        return self._service

    async def start(self) -> None:
        settings = self.settings
        try:
            removed = await asyncio.to_thread(self.files.prepare)
            await asyncio.to_thread(_probe_writable, settings.data_dir)
        except OSError as exc:
            raise StartupError(f"data directory {settings.data_dir} is not usable: {exc}. Fix DATA_DIR (it must be "
                               "a writable directory with free space).") from None
        if removed:
            log.warning("removed %d half-written file(s) left by an earlier crash", removed)
        await self.store.open()
        # 1. outbound: one guarded HTTP session for callbacks and image_url downloads
        self._session = session = make_guarded_session(
            allow_private=settings.callback_allow_private,
            timeout=max(settings.callback_timeout_seconds, settings.image_url_timeout_seconds),
        )
        sender = self._sender or CallbackSender(session, timeout=settings.callback_timeout_seconds,
                                                allow_private=settings.callback_allow_private)
        self.notifier = CallbackNotifier(
            self.store, self.files, sender, image_url=settings.image_url, metrics=self.metrics,
            not_before_seconds=settings.callback_not_before_seconds,
        )

        async def download(url: str) -> bytes:
            return await fetch_image(session, url, max_bytes=settings.max_image_bytes,
                                     timeout=settings.image_url_timeout_seconds,
                                     allow_private=settings.callback_allow_private)

        # 2. how jobs end, and the inputs fetched ahead of the workers
        finisher = JobFinisher(self.store, self.files, self.metrics, self._job_finished)
        self.prefetcher = InputPrefetcher(download, self.store, self.files, self.queue, finisher,
                                          concurrency=PREFETCH_CONCURRENCY, max_bytes=settings.max_image_bytes,
                                          max_pixels=settings.max_image_pixels)
        # 3. one worker per engine, one engine per device (none with editing disabled)
        if not self.engines and settings.enable_kontext_edit:
            from kontext.engine.devices import resolve_devices  # torch is heavy: import on demand
            from kontext.engine.engine import EngineConfig, KontextEngine

            devices = resolve_devices(settings.kontext_devices, settings.kontext_device)
            self.engines = [KontextEngine(EngineConfig.from_settings(settings, device)) for device in devices]
        if self.engines:
            self.workers = WorkerPool([
                Worker(f"w{index}", engine, self.store, self.queue, self.files, finisher, self.prefetcher,
                       max_pixels=settings.max_image_pixels, max_attempts=settings.max_attempts, metrics=self.metrics)
                for index, engine in enumerate(self.engines)])
        # 4. the service, then what a previous process left: unfinished jobs and unsent callbacks
        self._service = EditService(settings, self.store, self.queue, self.files, workers=self.workers,
                                    prefetcher=self.prefetcher, finisher=finisher, metrics=self.metrics)
        await self._service.recover()
        await self.notifier.resend_pending()
        if self.workers is not None:
            self.workers.start(eager=settings.kontext_load == "eager")
        self._spawn(self._sweep_forever(), "retention-sweep")

    def _job_finished(self, job: JobRecord) -> None:
        self.service.finished(job)
        if self.notifier is not None:
            self.notifier.schedule(job)

    def count_rejection(self, code: str) -> None:
        """Every refused request, from any door, by error code (the metrics' one entry point)."""
        self.metrics.jobs_rejected.labels(code).inc()

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
        if self.notifier is not None:
            await self.notifier.drain(timeout=self.settings.callback_timeout_seconds)
        if self._session is not None:
            await self._session.close()
        await self.store.close()

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


def _probe_writable(directory: "os.PathLike[str]") -> None:
    """Write, sync and remove a small file: catches read-only mounts and full disks at start."""
    from kontext.media.files import remove_quietly, write_atomic

    probe = Path(directory) / ".write-probe"
    write_atomic(probe, b"kontext-miner" * 64)
    remove_quietly(probe)
