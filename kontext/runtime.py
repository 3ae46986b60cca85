"""Runtime: builds, starts and stops the long-lived parts (store, engine, worker, callbacks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Coroutine, Optional

import aiohttp

from kontext.delivery.callbacks import CallbackSender
from kontext.errors import StartupError
from kontext.delivery.fetch import fetch_image
from kontext.media.files import ImageFiles
from kontext.metrics import Metrics
from kontext.delivery.guard import make_guarded_session
from kontext.delivery.notifier import CallbackNotifier, Deliverer
from kontext.jobs.queue import JobQueue
from kontext.jobs.record import JobRecord
from kontext.jobs.service import EditService
from kontext.settings import Settings
from kontext.jobs.store import SqliteJobStore
from kontext.jobs.worker import Engine, Worker

log = logging.getLogger(__name__)


class Runtime:
    """Owns everything the sidecar and the axon share; one per process.

    ``engine`` and ``sender`` may be injected (tests use fakes); by default the real
    ``KontextEngine`` and ``CallbackSender`` are built from the settings. Shutdown order: stop
    accepting -> let the running job finish (bounded) -> stop the worker -> flush callbacks ->
    close the session and the store. With editing disabled there is no worker: queued jobs wait
    (and their status answers) until editing is enabled again.
    """

    def __init__(self, settings: Settings, *, engine: Optional[Engine] = None,
                 sender: Optional[Deliverer] = None) -> None:
        self.settings = settings
        self.engine = engine
        self._sender = sender
        self.store = SqliteJobStore(settings.database_path)
        self.files = ImageFiles(settings.inputs_dir, settings.edits_dir)
        self.queue = JobQueue()
        self.metrics = Metrics()
        self.metrics.watch_queue(lambda: len(self.queue))
        self._session: Optional[aiohttp.ClientSession] = None
        self._tasks: list[asyncio.Task[None]] = []
        self.worker: Optional[Worker] = None
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
        self._session = make_guarded_session(
            allow_private=settings.callback_allow_private,
            timeout=max(settings.callback_timeout_seconds, settings.image_url_timeout_seconds),
        )
        session = self._session
        sender = self._sender or CallbackSender(session, timeout=settings.callback_timeout_seconds,
                                                allow_private=settings.callback_allow_private)
        self.notifier = CallbackNotifier(
            self.store, self.files, sender, image_url=settings.image_url, metrics=self.metrics,
            not_before_seconds=settings.callback_not_before_seconds,
        )
        if self.engine is None and settings.enable_kontext_edit:
            from kontext.engine.engine import EngineConfig, KontextEngine  # torch is heavy: import on demand

            self.engine = KontextEngine(EngineConfig.from_settings(settings))

        async def download(url: str) -> bytes:
            return await fetch_image(session, url, max_bytes=settings.max_image_bytes,
                                     timeout=settings.image_url_timeout_seconds,
                                     allow_private=settings.callback_allow_private)

        if self.engine is not None:
            self.worker = Worker(
                self.engine, self.store, self.queue, self.files,
                fetch_image=download, on_finished=self._job_finished,
                max_pixels=settings.max_image_pixels, max_attempts=settings.max_attempts,
                metrics=self.metrics,
            )
        self._service = EditService(settings, self.store, self.queue, self.files,
                                    engine=self.engine, progress=self.worker, metrics=self.metrics)
        await self._service.recover()
        await self.notifier.resend_pending()
        if self.worker is not None:
            self._spawn(self.worker.run(eager=settings.kontext_load == "eager"), "worker")
        self._spawn(self._sweep_forever(), "retention-sweep")

    def _job_finished(self, job: JobRecord) -> None:
        self.service.finished(job)
        if self.notifier is not None:
            self.notifier.schedule(job)

    def count_rejection(self, code: str) -> None:
        """Every refused request, from either door, by error code (the metrics' one entry point)."""
        self.metrics.jobs_rejected.labels(code).inc()

    async def quiesce(self, grace_seconds: float) -> None:
        """Stop accepting jobs (503) and give the running job up to ``grace_seconds`` to finish."""
        if self._service is not None:
            self._service.accepting = False
        if self.worker is not None and self.worker.current_job is not None and grace_seconds > 0:
            log.info("waiting up to %.0fs for job %s to finish", grace_seconds, self.worker.current_job)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.worker.wait_idle(), grace_seconds)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        await self.quiesce(grace_seconds)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.worker is not None:
            self.worker.shutdown()
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
    from kontext.media.images import remove_quietly, write_atomic

    probe = Path(directory) / ".write-probe"
    write_atomic(probe, b"kontext-miner" * 64)
    remove_quietly(probe)
