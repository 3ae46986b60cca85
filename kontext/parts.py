"""The parts a runtime is built from, each made by one builder, with the stop that undoes its start.

``Parts`` is aiohttp's cleanup-context idea on ``contextlib.AsyncExitStack``: started in order, stopped in reverse;
a stop that fails is logged and the ones after it still run, so the store (the first part) is always closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Optional

import aiohttp

from kontext.delivery.callbacks import CallbackSender
from kontext.delivery.fetch import fetch_image
from kontext.delivery.guard import make_guarded_session
from kontext.delivery.notifier import CallbackNotifier, Deliverer
from kontext.errors import StartupError, StorageUnavailable
from kontext.jobs.finish import JobFinisher
from kontext.jobs.inputs import InputPrefetcher
from kontext.jobs.queue import JobQueue, RunQueue
from kontext.jobs.record import JobRecord
from kontext.jobs.store import JobStore, SqliteJobStore
from kontext.media.files import ImageFiles, ImageStore, remove_quietly, write_atomic
from kontext.metrics import Metrics
from kontext.settings import Settings

log = logging.getLogger(__name__)

PREFETCH_CONCURRENCY = 4
"""image_url downloads at once (each bounded by IMAGE_URL_TIMEOUT_SECONDS and MAX_IMAGE_BYTES)."""


class Parts:
    """Stops registered as parts start, run in reverse by ``close``; failures are logged, never stop the rest."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self.errors: list[BaseException] = []

    def on_stop(self, name: str, stop: Callable[[], Awaitable[Any]]) -> None:
        async def logged() -> None:
            try:
                await stop()
            except Exception as exc:  # noqa: BLE001 - collected: the parts after it must still stop
                log.exception("stopping %s failed", name)
                self.errors.append(exc)

        self._stack.push_async_callback(logged)

    def task(self, name: str, coro: Coroutine[Any, Any, None], then: Optional[Callable[[], Awaitable[Any]]] = None
             ) -> asyncio.Task[None]:
        """A background task, cancelled and awaited at the stop (``then`` after it: a heartbeat's withdrawal)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if then is not None:
                await then()

        self.on_stop(name, stop)
        return task

    async def close(self) -> None:
        await self._stack.aclose()


@dataclass
class Storage:
    """Where jobs live: the store, the images and the run queue (and the Redis client they share, if any)."""

    store: JobStore
    files: ImageStore
    queue: RunQueue
    redis: Any = None


def build_storage(settings: Settings, process: str) -> Storage:
    """SQLite, files and an in-memory queue on one host; Redis for many (``process`` names this consumer)."""
    if settings.job_backend == "redis":
        from kontext.jobs.redis_queue import RedisJobQueue
        from kontext.jobs.redis_store import RedisJobStore
        from kontext.media.redis_files import RedisImageStore
        from kontext.redis_client import connect

        redis = connect(settings.redis_url)
        return Storage(RedisJobStore(redis), RedisImageStore(redis, retention_seconds=settings.retention_hours * 3600),
                       RedisJobQueue(redis, consumer=process, lease_seconds=settings.redis_lease_seconds), redis)
    return Storage(SqliteJobStore(settings.database_path), ImageFiles(settings.inputs_dir, settings.edits_dir),
                   JobQueue())


async def open_storage(storage: Storage, settings: Settings, parts: Parts) -> None:
    """Open it, or one ``StartupError`` saying what to fix (a door fails fast); its close is registered first."""
    parts.on_stop("storage", lambda: close_storage(storage))
    if settings.job_backend == "redis":
        try:
            await storage.store.open()
            await storage.queue.open()
        except StorageUnavailable as exc:
            raise StartupError(f"{exc.message}. Check REDIS_URL ({settings.redis_url}) and that Redis runs") from None
        return
    try:
        removed = await asyncio.to_thread(storage.files.prepare)
        await asyncio.to_thread(_probe_writable, settings.data_dir)
        await storage.store.open()
    except (OSError, StorageUnavailable) as exc:
        raise StartupError(f"data directory {settings.data_dir} is not usable: {exc}. Fix DATA_DIR (it must be "
                           "a writable directory with free space).") from None
    if removed:
        log.warning("removed %d half-written file(s) left by an earlier crash", removed)


async def close_storage(storage: Storage) -> None:
    await storage.queue.close()
    await storage.store.close()
    if storage.redis is not None:
        with contextlib.suppress(Exception):
            await storage.redis.aclose()


@dataclass
class Delivery:
    """Outbound traffic (one guarded session): callbacks, how jobs end, and downloads ahead of the workers."""

    session: aiohttp.ClientSession
    notifier: CallbackNotifier
    finisher: JobFinisher
    prefetcher: InputPrefetcher


def build_delivery(settings: Settings, storage: Storage, metrics: Metrics, parts: Parts, *,
                   on_finished: Callable[[JobRecord], None], sender: Optional[Deliverer] = None,
                   shared: bool = False) -> Delivery:
    """``shared``: other processes send callbacks from the same store (a ``sending`` one may be theirs)."""
    session = make_guarded_session(allow_private=settings.outbound_allow_private,
                                   timeout=max(settings.callback_timeout_seconds, settings.image_url_timeout_seconds))
    sender = sender or CallbackSender(session, timeout=settings.callback_timeout_seconds,
                                      allow_private=settings.outbound_allow_private)
    notifier = CallbackNotifier(storage.store, storage.files, sender, image_url=settings.image_url, metrics=metrics,
                                not_before_seconds=settings.callback_not_before_seconds,
                                interrupted_after=settings.callback_timeout_seconds + 30 if shared else None)

    def finished(job: JobRecord) -> None:
        on_finished(job)
        notifier.schedule(job)

    async def download(url: str) -> bytes:
        return await fetch_image(session, url, max_bytes=settings.max_image_bytes,
                                 timeout=settings.image_url_timeout_seconds,
                                 allow_private=settings.outbound_allow_private)

    finisher = JobFinisher(storage.store, storage.files, metrics, finished)
    prefetcher = InputPrefetcher(download, storage.store, storage.files, storage.queue, finisher,
                                 concurrency=PREFETCH_CONCURRENCY, max_bytes=settings.max_image_bytes,
                                 max_pixels=settings.max_image_pixels)
    delivery = Delivery(session, notifier, finisher, prefetcher)

    async def stop() -> None:  # downloads stop, callbacks under way finish (bounded), then the session closes
        await prefetcher.close()
        await notifier.drain(timeout=settings.callback_timeout_seconds)
        await session.close()

    parts.on_stop("delivery", stop)
    return delivery


def _probe_writable(directory: str | os.PathLike[str]) -> None:
    """Write, sync and remove a small file: catches read-only mounts and full disks at start."""
    probe = Path(directory) / ".write-probe"
    write_atomic(probe, b"kontext-miner" * 64)
    remove_quietly(probe)
