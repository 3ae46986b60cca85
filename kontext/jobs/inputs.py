"""Inputs by URL are downloaded before their job reaches a worker, so a URL that never answers holds
up nobody: at most ``concurrency`` downloads at once, each with a total deadline and a byte cap."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Awaitable, Callable, Optional

from kontext.delivery.fetch import ImageFetchError
from kontext.errors import EditError, StorageUnavailable
from kontext.jobs.chaining import URL_SOURCES
from kontext.jobs.finish import JobFinisher
from kontext.jobs.persist import keep_trying
from kontext.jobs.queue import QueuedJob, RunQueue
from kontext.jobs.record import JobRecord
from kontext.jobs.store import JobStore
from kontext.media.files import ImageStore
from kontext.media.images import check_image_bytes

log = logging.getLogger(__name__)

ImageFetcher = Callable[[str], Awaitable[bytes]]


class InputPrefetcher:
    """Download -> the job's input file -> the run queue; a failed download fails the job with its reason."""

    def __init__(self, fetch: ImageFetcher, store: JobStore, files: ImageStore, queue: RunQueue,
                 finisher: JobFinisher, *, concurrency: int, max_bytes: int, max_pixels: int) -> None:
        self.fetch = fetch
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.store = store
        self.files = files
        self.queue = queue
        self.finisher = finisher
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._steps: dict[str, int] = {}

    def __len__(self) -> int:
        """Jobs whose input is being (or waiting to be) downloaded."""
        return len(self._tasks)

    def pending_steps(self) -> list[int]:
        """The steps of each job whose input is being downloaded (the admission estimate's work ahead)."""
        return list(self._steps.values())

    def schedule(self, job_id: str, url: str, priority: float, entry: Optional[QueuedJob] = None, *,
                 steps: int = 1) -> None:
        """Download, then queue the job. ``entry``: the queue entry a worker handed over; it is closed only
        once the job is queued again (or failed), so a shared queue's lease keeps it safe meanwhile."""
        if job_id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._prefetch(job_id, url, priority, entry),
                                                      name=f"fetch-{job_id}")
        self._tasks[job_id] = task
        self._steps[job_id] = steps

        def forget(_: object) -> None:
            self._tasks.pop(job_id, None)
            self._steps.pop(job_id, None)

        task.add_done_callback(forget)

    async def close(self) -> None:
        """Stop every download; their jobs stay queued in the store and are fetched again at the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _prefetch(self, job_id: str, url: str, priority: float, entry: Optional[QueuedJob]) -> None:
        # Cancelled (a shutdown): the entry stays held, and the next start or its lease brings the job back.
        # The store or queue away: each write is tried again until it works (kontext/jobs/persist.py).
        await self._fetch_then_queue(job_id, url, priority, entry)

    async def _fetch_then_queue(self, job_id: str, url: str, priority: float, entry: Optional[QueuedJob]) -> None:
        """Queue the job once its input is stored (closing the worker's entry in the same step), or fail it."""
        error: Optional[str] = None
        try:
            async with self._slots:
                data = await self.fetch(url)
            await asyncio.to_thread(check_image_bytes, data, field="image_url", max_bytes=self.max_bytes,
                                    max_pixels=self.max_pixels)
        except (ImageFetchError, EditError) as exc:  # the URL's fault: the job ends with the reason
            error = str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever else, the job must end with a reason
            log.exception("download for %s failed", job_id)
            error = f"image_url: download failed: {type(exc).__name__}"
        if error is None:
            error = await keep_trying(lambda: self._store_input(job_id, data), f"storing the input of {job_id}")
        if error is None:
            queue_it = (partial(self.queue.requeue, entry) if entry is not None  # the worker's entry closed with it
                        else partial(self.queue.put, job_id, priority, steps=self._steps.get(job_id, 1)))
            await keep_trying(queue_it, f"queueing {job_id}")
            return
        await keep_trying(lambda: self._fail(job_id, error or ""), f"failing {job_id}")
        if entry is not None:
            await keep_trying(partial(self.queue.done, entry), f"closing the entry of {job_id}")

    async def _store_input(self, job_id: str, data: bytes) -> Optional[str]:
        """None once stored; the reason when the disk refuses the file (full, read-only): the job fails."""
        try:
            await self.files.write_input(job_id, data)
        except StorageUnavailable as exc:
            return f"could not store the downloaded image: {exc.message}"
        return None

    async def _fail(self, job_id: str, error: str) -> None:
        job = await self.store.get(job_id)
        if job is not None and not job.status.finished:
            await self.finisher.fail(job, error)


async def enqueue(job: JobRecord, queue: RunQueue, files: ImageStore, prefetcher: Optional[InputPrefetcher]) -> None:
    """Queue ``job``, runnable now, or once its image_url is downloaded (a slow URL holds up no other job)."""
    if job.image_source in URL_SOURCES and prefetcher is not None and job.request.image_url \
            and not await files.has_input(job.id):
        prefetcher.schedule(job.id, job.request.image_url, job.priority, steps=job.request.num_inference_steps)
    else:
        await queue.put(job.id, job.priority, steps=job.request.num_inference_steps)
