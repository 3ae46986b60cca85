"""Door and worker roles sharing a real Redis, in one test process (fake engines): what one host's failure
may and may not do to the others' work."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from kontext.jobs.redis_queue import GROUP, RedisJobQueue
from kontext.runtime import Runtime
from protocol import EditRequest, JobStatus
from tests.fakes import FakeEngine, png_bytes
from tests.unit.test_sidecar import make_settings

IMAGE_B64 = base64.b64encode(png_bytes((32, 32), (10, 20, 30))).decode()


async def _until(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_a_worker_host_whose_engines_failed_leaves_the_shared_queue_to_the_others(tmp_path: Path,
                                                                                      redis_server) -> None:
    def settings(name: str, **extra: object):  # type: ignore[no-untyped-def]
        return make_settings(tmp_path / name, job_backend="redis", redis_url=redis_server.url, **extra)

    door = Runtime(settings("door"), role="door")
    broken = Runtime(settings("broken", kontext_load="lazy"), engines=[FakeEngine(fail_load="no weights")],
                     role="worker")
    healthy = Runtime(settings("healthy"), engines=[FakeEngine()], role="worker")
    await door.start()
    await broken.start()
    try:
        request = EditRequest.model_validate({"prompt": "p", "seed": 1, "image_b64": IMAGE_B64})
        job_id = (await door.service.submit(request)).job_id

        async def broken_failed() -> bool:
            return broken.workers is not None and broken.workers.error is not None

        await _until(broken_failed)
        await asyncio.sleep(1.5)  # time enough to take (and, before the fix, fail) every queued job
        assert (await door.service.status(job_id)).status is JobStatus.QUEUED
        queue = broken.queue
        assert isinstance(queue, RedisJobQueue)
        held = [await broken.redis.xpending(stream, GROUP) for stream in queue.streams]
        assert sum(summary["pending"] for summary in held) == 0  # the entry it put back was closed, not kept
        assert await queue.size() == 1
        await healthy.start()

        async def completed() -> bool:
            return (await door.service.status(job_id)).status is JobStatus.COMPLETED

        await _until(completed)
        assert (await door.service.status(job_id)).worker.startswith(healthy.settings.worker_name or "")
    finally:
        for runtime in (healthy, broken, door):
            await runtime.stop()
