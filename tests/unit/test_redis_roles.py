"""Door and worker roles sharing a real Redis, in one test process (fake engines): what one host's failure
may and may not do to the others' work."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from kontext.jobs.heartbeat import FORGET_AFTER_SECONDS, KEY, STALE_AFTER_SECONDS, RemoteWorkers
from kontext.jobs.redis_queue import GROUP, RedisJobQueue
from kontext.redis_client import connect
from kontext.runtime import Runtime
from protocol import EditRequest, JobStatus
from tests.fakes import FakeEngine, png_bytes
from tests.unit.test_sidecar import make_settings
from tests.waiting import until

IMAGE_B64 = base64.b64encode(png_bytes((32, 32), (10, 20, 30))).decode()


@pytest.fixture
def redis_server(module_redis_server: Any, fresh_redis: Any) -> Any:
    """The module's one redis-server, emptied before each test (a start per test cost more than most tests)."""
    return module_redis_server



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

        await until(broken_failed)  # it loads lazily: its first job loaded it, so it holds that job now
        queue = broken.queue
        assert isinstance(queue, RedisJobQueue)

        async def put_back_once() -> bool:  # the entry it took was closed, not kept; the job waits once
            held = [await broken.redis.xpending(stream, GROUP) for stream in queue.streams]
            return sum(summary["pending"] for summary in held) == 0 and await queue.size() == 1

        await until(put_back_once, what="the job put back and its entry closed")
        assert (await door.service.status(job_id)).status is JobStatus.QUEUED  # (before the fix: failed)
        await healthy.start()

        async def completed() -> bool:
            return (await door.service.status(job_id)).status is JobStatus.COMPLETED

        await until(completed)
        assert (await door.service.status(job_id)).worker.startswith(healthy.settings.worker_name or "")

        async def recipe_named() -> bool:  # the door's /health names the workers' recipe, from their heartbeats
            engine = (await door.service.health())["engine"]
            return engine["recipe"] == "fake-v1" and {w["recipe"] for w in engine["workers"]} == {"fake-v1"}

        await until(recipe_named, what="the door's /health naming the workers' recipe")
    finally:
        for runtime in (healthy, broken, door):
            await runtime.stop()


async def test_doors_see_fresh_workers_only_and_forget_long_dead_ones(redis_server) -> None:
    client = connect(redis_server.url)
    try:
        now = time.time()

        def beat(name: str, age: float) -> str:
            return json.dumps({"name": name, "process": name.split("/")[0], "state": "ready", "at": now - age})

        await client.hset(KEY, mapping={"h:1/w0": beat("h:1/w0", 0), "h:2/w0": beat("h:2/w0", STALE_AFTER_SECONDS + 1),
                                        "h:3/w0": beat("h:3/w0", FORGET_AFTER_SECONDS + 1)})
        view = RemoteWorkers(client)
        await view.refresh()
        assert [worker["name"] for worker in view.describe()["workers"]] == ["h:1/w0"]
        assert sorted(await client.hkeys(KEY)) == [b"h:1/w0", b"h:2/w0"]  # a killed one's field does not pile up
    finally:
        await client.aclose()


async def test_a_door_whose_clock_is_off_still_sees_the_workers(tmp_path: Path, redis_server, monkeypatch) -> None:
    """Beats were stamped with the worker host's clock and aged by the door's: a door a minute ahead saw no
    worker at all, and claimed no capacity."""
    import kontext.jobs.heartbeat

    worker = Runtime(make_settings(tmp_path, job_backend="redis", redis_url=redis_server.url),
                     engines=[FakeEngine()], role="worker")
    await worker.start()
    client = connect(redis_server.url)
    try:
        async def beats_ready() -> bool:  # (the first beat may still say "loading")
            return any(json.loads(beat)["state"] == "ready" for beat in (await client.hvals(KEY)))

        await until(beats_ready, what="a heartbeat saying ready")
        skewed = time.time() + 60.0
        monkeypatch.setattr(kontext.jobs.heartbeat.time, "time", lambda: skewed)  # the door's clock, a minute ahead
        view = RemoteWorkers(client)
        await view.refresh()
        assert [worker["state"] for worker in view.describe()["workers"]] == ["ready"]
    finally:
        await client.aclose()
        await worker.stop()


async def test_a_stopped_worker_process_leaves_no_heartbeat_behind(tmp_path: Path, redis_server) -> None:
    worker = Runtime(make_settings(tmp_path, job_backend="redis", redis_url=redis_server.url),
                     engines=[FakeEngine(), FakeEngine()], role="worker")
    await worker.start()
    client = worker.redis

    async def published() -> bool:
        return len(await client.hkeys(KEY)) == 2

    await until(published)
    await worker.stop()
    check = connect(redis_server.url)
    try:
        assert await check.hkeys(KEY) == []
    finally:
        await check.aclose()
