"""The worker: its states, the next job prepared while one denoises (never two on the device), chained jobs kept
in the queue (bounded, counted, placed), and the run deadline that takes a hung device out and restarts."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from kontext.errors import ServiceBusy
from kontext.jobs.worker_state import WorkerState
from kontext.runtime import Runtime
from protocol import EditRequest, JobStatus
from tests.fakes import FakeEngine
from tests.unit.test_sidecar import IMAGE_B64, make_settings
from tests.waiting import until


def _request(seed: int, **extra: object) -> EditRequest:
    body: dict = {"prompt": "p", "seed": seed, "num_inference_steps": 2, **extra}
    if "reference_job_id" not in extra:
        body["image_b64"] = IMAGE_B64
    return EditRequest.model_validate(body)


async def _status(runtime: Runtime, job_id: str) -> JobStatus:
    return (await runtime.service.status(job_id)).status


async def test_a_worker_moves_only_along_its_states(tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path, admission_window=3), engine=FakeEngine())
    runtime._build_workers(runtime._delivery())
    assert runtime.workers is not None
    worker = runtime.workers.workers[0]
    assert worker.state is WorkerState.STARTING
    assert worker.recent_edits.maxlen == 3  # ADMISSION_WINDOW: the edits the estimate is fitted to
    with pytest.raises(RuntimeError, match="no move from starting to stopped"):
        worker.move(WorkerState.STOPPED)
    await runtime.stop()  # drains: starting -> stopping -> stopped
    assert worker.state is WorkerState.STOPPED
    with pytest.raises(RuntimeError, match="no move from stopped to ready"):
        worker.move(WorkerState.READY)


async def test_the_next_job_is_taken_and_prepared_while_one_denoises_never_two_at_once(tmp_path: Path) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)  # asserts that no two denoise calls overlap
    runtime = Runtime(make_settings(tmp_path), engine=engine)
    await runtime.start()
    try:
        first, second, third = [(await runtime.service.submit(_request(seed))).job_id for seed in (1, 2, 3)]
        workers = runtime.workers
        assert workers is not None

        async def one_on_the_device_one_taken_ahead() -> bool:
            return workers.running() == 1 and workers.waiting_for_device() == [second]

        await until(one_on_the_device_one_taken_ahead)
        statuses = [await runtime.service.status(job_id) for job_id in (first, second, third)]
        assert [s.status for s in statuses] == [JobStatus.PROCESSING, JobStatus.QUEUED, JobStatus.QUEUED]
        assert [s.queue_position for s in statuses] == [None, 1, 2]  # the one taken ahead comes first
        assert (await runtime.service.health())["queue"]["depth"] == 2
        gate.set()
        for job_id in (first, second, third):
            await until(lambda job_id=job_id: _is(runtime, job_id, JobStatus.COMPLETED))
        done = [await runtime.store.get(job_id) for job_id in (first, second, third)]
        assert [job.attempts for job in done] == [1, 1, 1]  # type: ignore[union-attr]
        assert done[0].started_at < done[1].started_at < done[2].started_at  # type: ignore[union-attr,operator]
        assert len(engine.calls) == 3  # and the engine saw no two on its device at once (FakeEngine asserts it)

        async def three_samples() -> bool:  # the worker records an edit just after its job shows completed
            return len(workers.edit_samples()) == 3

        await until(three_samples, what="three edits recorded")
        samples = workers.edit_samples()  # what the admission estimate learns: steps, seconds, seconds a step
        assert all(steps == 2 and per_step is not None for steps, _, per_step in samples)
    finally:
        gate.set()
        await runtime.stop()


async def _is(runtime: Runtime, job_id: str, status: JobStatus) -> bool:
    return await _status(runtime, job_id) is status


async def test_chained_jobs_waiting_for_their_reference_are_queued_jobs(tmp_path: Path) -> None:
    """They count toward MAX_QUEUE and the depth, and have a place (they once sat in a task each, unbounded)."""
    gate = threading.Event()
    runtime = Runtime(make_settings(tmp_path, max_queue=3), engine=FakeEngine(gate=gate))
    await runtime.start()
    try:
        reference = (await runtime.service.submit(_request(1))).job_id
        await until(lambda: _is(runtime, reference, JobStatus.PROCESSING))
        chained = [(await runtime.service.submit(_request(10 + i, reference_job_id=reference))).job_id
                   for i in range(3)]
        with pytest.raises(ServiceBusy, match="the queue is full"):
            await runtime.service.submit(_request(20, reference_job_id=reference))
        assert (await runtime.service.health())["queue"]["depth"] == 3
        for job_id in chained:  # (a worker keeps looking at each in turn: the places move, each stays 1..3)
            assert (await runtime.service.status(job_id)).queue_position in (1, 2, 3)
        gate.set()
        for job_id in chained:
            await until(lambda job_id=job_id: _is(runtime, job_id, JobStatus.COMPLETED))
    finally:
        gate.set()
        await runtime.stop()


async def test_a_swept_reference_is_said_to_have_expired(tmp_path: Path) -> None:
    gate = threading.Event()
    gate.set()
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine(gate=gate))
    await runtime.start()
    try:
        reference = (await runtime.service.submit(_request(1))).job_id
        await until(lambda: _is(runtime, reference, JobStatus.COMPLETED))
        gate.clear()
        blocker = (await runtime.service.submit(_request(2))).job_id
        await until(lambda: _is(runtime, blocker, JobStatus.PROCESSING))
        filler = (await runtime.service.submit(_request(3))).job_id

        async def taken_ahead() -> bool:
            return runtime.workers is not None and runtime.workers.waiting_for_device() == [filler]

        await until(taken_ahead)
        chained = (await runtime.service.submit(_request(4, reference_job_id=reference))).job_id
        assert await runtime.store.expire_finished_before(float("inf"), 1.0) == [reference]  # retention, meanwhile
        gate.set()
        await until(lambda: _is(runtime, chained, JobStatus.FAILED))
        error = (await runtime.service.status(chained)).error or ""
        assert f"reference_job_id {reference} has expired" in error and "did not complete" not in error
    finally:
        gate.set()
        await runtime.stop()


async def test_a_hung_device_fails_its_job_leaves_the_rotation_and_asks_for_a_restart(tmp_path: Path) -> None:
    gate = threading.Event()  # never set: the pipeline call does not return (a hung kernel)
    runtime = Runtime(make_settings(tmp_path, run_deadline_seconds=0.5), engine=FakeEngine(gate=gate))
    await runtime.start()
    try:
        hung = (await runtime.service.submit(_request(1))).job_id
        behind = (await runtime.service.submit(_request(2))).job_id
        await until(lambda: _is(runtime, hung, JobStatus.FAILED))
        status = await runtime.service.status(hung)
        assert "did not finish within its run deadline of 0.5s" in (status.error or "")
        await asyncio.wait_for(runtime.restart.wait(), 5)
        assert "device may be hung" in (runtime.restart_reason or "")
        assert runtime.workers is not None and runtime.workers.serving() == 0
        assert runtime.service.capacity()["img-h100_pcie"] is False  # the validator is told before the restart
        assert (await runtime.service.health())["status"] == "degraded"
        assert await _status(runtime, behind) is JobStatus.QUEUED  # never started: the restart runs it
    finally:
        gate.set()
        await runtime.stop()


async def test_serve_exits_for_a_restart_when_the_device_hangs(tmp_path: Path) -> None:
    from aiohttp import web

    from kontext.http.serve import Listener, RestartRequired, serve

    gate = threading.Event()
    runtime = Runtime(make_settings(tmp_path, run_deadline_seconds=0.3, shutdown_grace_seconds=0),
                      engine=FakeEngine(gate=gate))
    serving = asyncio.ensure_future(serve(runtime, [Listener("none", web.Application(), "127.0.0.1", 0)]))
    try:
        await until(lambda: _started(runtime))
        await runtime.service.submit(_request(1))
        with pytest.raises(RestartRequired, match="device may be hung"):
            await asyncio.wait_for(serving, 30)
    finally:
        gate.set()


async def _started(runtime: Runtime) -> bool:
    return runtime._service is not None
