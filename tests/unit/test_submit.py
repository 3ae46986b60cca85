"""Submitting: a retry of the same request is the same job (idempotent, as cog's create); the id is claimed before
the input is written, so two doors racing for one job_id leave the winner's job whole."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from kontext.errors import JobConflict, ServiceBusy
from kontext.runtime import Runtime
from protocol import EditRequest, JobStatus
from tests.fakes import FakeEngine, png_bytes
from tests.unit.test_sidecar import IMAGE_B64, make_settings
from tests.waiting import until


def _request(**extra: Any) -> EditRequest:
    return EditRequest.model_validate({"prompt": "p", "seed": 1, "num_inference_steps": 2, "job_id": "job-1",
                                       "image_b64": IMAGE_B64, **extra})


async def test_the_same_request_again_is_the_same_job_and_another_one_is_a_conflict(tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    await runtime.start()
    try:
        first = await runtime.service.submit(_request())
        again = await runtime.service.submit(_request())  # a retry after a lost reply
        assert again == first
        await until(lambda: _completed(runtime, "job-1"))
        assert await runtime.service.submit(_request()) == first  # finished since: still the same job
        assert sum((await runtime.store.count_by_status()).values()) == 1
        assert len(runtime.engines[0].calls) == 1  # type: ignore[attr-defined]  # it ran once
        with pytest.raises(JobConflict, match="already exists with another request"):
            await runtime.service.submit(_request(seed=2))
        with pytest.raises(JobConflict):
            await runtime.service.submit(_request(image_b64=base64.b64encode(png_bytes((32, 32), (1, 2, 3))).decode()))
    finally:
        await runtime.stop()


async def test_the_same_job_id_in_the_same_request_over_http_answers_200_with_the_same_body(tmp_path: Path,
                                                                                           aiohttp_client) -> None:
    from kontext.http.app import create_app

    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    client = await aiohttp_client(create_app(runtime, manage_runtime=True))
    body = {"prompt": "p", "seed": 1, "job_id": "job-http", "image_b64": IMAGE_B64, "num_inference_steps": 2}
    first = await client.post("/edit", json=body)
    again = await client.post("/edit", json=body)
    assert first.status == again.status == 200 and await first.json() == await again.json()
    other = await client.post("/edit", json={**body, "prompt": "another"})
    assert other.status == 409 and (await other.json())["error"] == "job_exists"


async def _completed(runtime: Runtime, job_id: str) -> bool:
    return (await runtime.service.status(job_id)).status is JobStatus.COMPLETED


async def test_two_doors_racing_for_one_job_id_leave_the_winners_job_whole(tmp_path: Path,
                                                                         module_redis_server) -> None:
    """The id is claimed by the insert first, then the input written: the loser writes nothing (it once wrote its
    image over the winner's, and its own conflict escaped as a 500)."""
    doors = [Runtime(make_settings(tmp_path / name, job_backend="redis", redis_url=module_redis_server.url,
                                   worker_name=name), role="door") for name in ("a", "b")]
    for door in doors:
        await door.start()
    try:
        images = [png_bytes((32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
        requests = [_request(job_id="race-1", image_b64=base64.b64encode(image).decode()) for image in images]
        outcomes = await asyncio.gather(*(door.service.submit(request) for door, request in zip(doors, requests)),
                                        return_exceptions=True)
        won = [index for index, outcome in enumerate(outcomes) if not isinstance(outcome, BaseException)]
        lost = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], JobConflict), outcomes
        assert await doors[0].files.read_input("race-1") == images[won[0]]  # the winner's image, not the loser's
    finally:
        for door in doors:
            await door.stop()
        from kontext.redis_client import connect

        redis = connect(module_redis_server.url)
        await redis.flushall()
        await redis.aclose()


async def test_a_claim_whose_image_was_never_stored_is_not_a_job(tmp_path: Path) -> None:
    """The process stopped between claiming the id and storing the image (its caller got no answer): the next start
    does not fail it as "image missing", and the caller's retry is accepted anew and runs."""
    from kontext.jobs.record import JobRecord, request_digest
    from protocol import CallbackStatus, ImageSource

    request = _request(job_id="half-1")
    settings = make_settings(tmp_path)
    crashed = Runtime(settings, engine=FakeEngine())
    await crashed.start()
    await crashed.store.insert(JobRecord(id="half-1", request=request, image_source=ImageSource.BASE64,
                                         request_digest=request_digest(request),
                                         callback_status=CallbackStatus.SKIPPED))  # claimed, then "killed"
    await crashed.stop()
    again = Runtime(settings, engine=FakeEngine())
    await again.start()  # recovery forgets the half-made claim
    try:
        assert await again.store.get("half-1") is None
        await again.service.submit(request)  # the caller's retry
        await until(lambda: _completed(again, "half-1"))
        await again.store.insert(JobRecord(id="half-2", request=_request(job_id="half-2"),
                                           image_source=ImageSource.BASE64,
                                           request_digest=request_digest(_request(job_id="half-2")),
                                           callback_status=CallbackStatus.SKIPPED))  # a door of a shared store
        await again.service.submit(_request(job_id="half-2"))  # its retry repairs it at once
        await until(lambda: _completed(again, "half-2"))
    finally:
        await again.stop()


async def test_the_queue_bound_counts_jobs_whose_image_is_being_stored(tmp_path: Path, monkeypatch) -> None:
    """The id is claimed first and the image written after, outside the lock: submits racing past the bound while
    images are still being written (nothing queued yet) once all got in."""
    gate = asyncio.Event()
    runtime = Runtime(make_settings(tmp_path, max_queue=2), engine=FakeEngine())
    await runtime.start()
    real_write = runtime.files.write_input

    async def slow_write(job_id: str, data: bytes) -> None:
        await gate.wait()
        await real_write(job_id, data)

    monkeypatch.setattr(runtime.files, "write_input", slow_write)
    try:
        submits = [asyncio.ensure_future(runtime.service.submit(_request(job_id=f"bound-{i}", seed=i)))
                   for i in range(4)]
        await until(lambda: _any_done(submits))  # the ones past the bound are refused while the others write
        gate.set()
        outcomes = await asyncio.gather(*submits, return_exceptions=True)
        accepted = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(accepted) == 2 and all(isinstance(o, ServiceBusy) for o in outcomes if o not in accepted)
    finally:
        gate.set()
        await runtime.stop()


async def _any_done(tasks: list) -> bool:  # type: ignore[type-arg]
    return sum(task.done() for task in tasks) == 2
