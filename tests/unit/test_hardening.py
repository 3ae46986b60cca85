"""Faults found at the edges, each pinned: drain on shutdown, retries keep their priority and are not crashes,
bounded callback error bodies, no credentials echoed, downloads that never hold up other jobs, image_url
inputs, the chained-job cap, and orphaned files in the retention sweep."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from kontext.delivery.callbacks import CallbackSender
from kontext.delivery.guard import make_guarded_session
from kontext.errors import StorageUnavailable
from kontext.runtime import Runtime
from protocol import CallbackPayload, CallbackStatus, EditRequest, ImageSource, JobStatus
from tests.e2e.servers import ThreadedApp
from tests.fakes import FakeEngine, RecordingDeliverer, png_bytes
from tests.unit.test_sidecar import make_settings
from tests.waiting import until

IMAGE_B64 = base64.b64encode(png_bytes()).decode()


def _request(seed: int, **extra: object) -> EditRequest:
    body: dict = {"prompt": "p", "seed": seed, "num_inference_steps": 2, **extra}
    if "image_url" not in extra and "reference_job_id" not in extra:
        body["image_b64"] = IMAGE_B64
    return EditRequest.model_validate(body)


async def _status(runtime: Runtime, job_id: str) -> JobStatus:
    return (await runtime.service.status(job_id)).status


async def test_shutdown_starts_no_new_job_and_cuts_off_none_it_could_finish(tmp_path: Path) -> None:
    """The old cleanup let the worker take the next job after the drain and then cut it off mid-run."""
    settings = make_settings(tmp_path)
    gate = threading.Event()
    runtime = Runtime(settings, engine=FakeEngine(gate=gate))
    await runtime.start()
    first = (await runtime.service.submit(_request(1))).job_id
    second = (await runtime.service.submit(_request(2))).job_id
    await until(lambda: _is(runtime, first, JobStatus.PROCESSING))
    threading.Timer(0.3, gate.set).start()  # the running job finishes inside the grace period
    await runtime.stop(grace_seconds=10)
    again = Runtime(settings, engine=FakeEngine())
    await again.start()
    try:
        done = await again.service.status(first)
        assert done.status is JobStatus.COMPLETED and done.attempts == 1  # finished before the stop, once
        waiting = await again.store.get(second)
        assert waiting is not None and waiting.attempts == 0  # never started by the stopping process
        await until(lambda: _is(again, second, JobStatus.COMPLETED))
        assert (await again.service.status(second)).attempts == 1
    finally:
        await again.stop()


async def test_a_job_past_the_grace_period_is_interrupted_and_runs_again(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    runtime = Runtime(settings, engine=engine)
    await runtime.start()
    job_id = (await runtime.service.submit(_request(3, num_inference_steps=4))).job_id
    await until(lambda: _is(runtime, job_id, JobStatus.PROCESSING))
    stopping = asyncio.ensure_future(runtime.stop(grace_seconds=0.2))
    await asyncio.sleep(0.5)
    gate.set()  # the engine reaches its next step: the interrupt stops it there
    await asyncio.wait_for(stopping, 10)
    assert not runtime.files.result_path(job_id).exists()  # the edit was cut off: no image came out of it
    again = Runtime(settings, engine=FakeEngine())
    await again.start()
    try:
        await until(lambda: _is(again, job_id, JobStatus.COMPLETED))
        assert (await again.service.status(job_id)).attempts == 2
    finally:
        await again.stop()


async def _is(runtime: Runtime, job_id: str, status: JobStatus) -> bool:
    return await _status(runtime, job_id) is status


def _refuse_one_result_write(monkeypatch, runtime: Runtime, then=None) -> None:  # type: ignore[no-untyped-def]
    """The store's next ``mark_finished`` fails as a full disk would (``then()`` runs at that moment)."""
    real = runtime.store.mark_finished
    refusals = {"left": 1}

    async def full_once(job_id, outcome):  # type: ignore[no-untyped-def]
        if refusals["left"]:
            refusals["left"] -= 1
            if then is not None:
                then()
            raise StorageUnavailable("the job database cannot be written (database or disk is full)")
        return await real(job_id, outcome)

    monkeypatch.setattr(runtime.store, "mark_finished", full_once)


async def test_a_store_retry_keeps_priority_and_is_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    """MAX_ATTEMPTS counts runs cut off by a stopped process; a write the store refused is retried
    with the job's own priority and never fails the job as 'the miner process stopped'."""
    import kontext.jobs.runner

    monkeypatch.setattr(kontext.jobs.runner, "RETRY_SECONDS", 0.05)
    runtime = Runtime(make_settings(tmp_path, max_attempts=1), engine=FakeEngine())
    await runtime.start()
    try:
        _refuse_one_result_write(monkeypatch, runtime)
        requeued = []
        real_put = runtime.queue.put

        async def spy(job_id: str, priority: float = 0.0, **options: float) -> bool:
            requeued.append((job_id, priority))
            return await real_put(job_id, priority, **options)

        monkeypatch.setattr(runtime.queue, "put", spy)
        job_id = (await runtime.service.submit(_request(4), priority=77.0)).job_id
        await until(lambda: _is(runtime, job_id, JobStatus.COMPLETED))
        assert requeued == [(job_id, 77.0), (job_id, 77.0)]  # submitted, then retried at its own priority
        assert (await runtime.service.status(job_id)).attempts == 2
        assert "kontext_store_retries_total 1.0" in runtime.metrics.render().decode()
    finally:
        await runtime.stop()


async def test_a_store_retry_then_one_stop_is_one_interruption_not_two(tmp_path: Path, monkeypatch) -> None:
    """MAX_ATTEMPTS=2: a run ended by a refused write (retried), then a run cut off by a stop. The job was
    failed as 'interrupted 2 time(s)': the store retry counted as a stopped process."""
    import kontext.jobs.runner

    monkeypatch.setattr(kontext.jobs.runner, "RETRY_SECONDS", 0.05)
    gate = threading.Event()
    settings = make_settings(tmp_path, max_attempts=2)
    engine = FakeEngine()
    runtime = Runtime(settings, engine=engine)
    await runtime.start()
    job_id = ""
    try:
        # the retried run is held at its first step, to be cut off by the stop
        _refuse_one_result_write(monkeypatch, runtime, then=lambda: setattr(engine, "gate", gate))
        job_id = (await runtime.service.submit(_request(5))).job_id

        async def retried_and_running() -> bool:
            job = await runtime.store.get(job_id)
            return job is not None and job.attempts == 2 and job.status is JobStatus.PROCESSING

        await until(retried_and_running)
    finally:
        await runtime.stop(grace_seconds=0.1)  # cut off: the job's one interruption
        gate.set()
    again = Runtime(settings, engine=FakeEngine())
    await again.start()
    try:
        await until(lambda: _is(again, job_id, JobStatus.COMPLETED))
        status = await again.service.status(job_id)
        assert status.attempts == 3 and status.error is None
    finally:
        await again.stop()


async def test_nothing_touches_the_store_after_a_stop_not_even_a_wait_begun_in_the_grace_period(
        tmp_path: Path, monkeypatch, caplog) -> None:
    """The drain cancelled the helper tasks once, at its start: a worker reading a chained job's reference when
    the stop came began its wait for that reference during the grace period; the wait lived on and polled the
    closed store."""
    gate = threading.Event()
    runtime = Runtime(make_settings(tmp_path), engines=[FakeEngine(gate=gate), FakeEngine(gate=gate)])
    await runtime.start()
    reference = (await runtime.service.submit(_request(6))).job_id
    await until(lambda: _is(runtime, reference, JobStatus.PROCESSING))
    real_get = runtime.store.get
    reading = asyncio.Event()

    async def slow_reference_read(job_id: str):  # type: ignore[no-untyped-def]
        if job_id == reference and not reading.is_set():
            reading.set()
            await asyncio.sleep(0.3)  # the stop begins meanwhile
        return await real_get(job_id)

    monkeypatch.setattr(runtime.store, "get", slow_reference_read)
    await runtime.service.submit(_request(7, reference_job_id=reference))
    await asyncio.wait_for(reading.wait(), 10)
    asyncio.get_running_loop().call_later(0.8, gate.set)  # the reference ends inside the grace period
    await runtime.stop(grace_seconds=5)
    await asyncio.sleep(1.2)  # two polls of a wait that outlived the stop
    assert not [record for record in caplog.records if "StoreClosed" in record.getMessage()
                or "not open" in record.getMessage()]
    left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
    assert left == []


async def test_a_receivers_error_body_is_read_a_few_hundred_bytes_at_most() -> None:
    """A receiver answering 500 with an endless body: the outcome is recorded at once, not after reading it all."""
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        while request.transport is not None and not request.transport.is_closing():  # until the client leaves
            await response.write(b"x" * 65536)
            await asyncio.sleep(0.01)
        return response

    server = ThreadedApp(lambda: _app_with(endless)).start()
    try:
        async with make_guarded_session(allow_private=True, timeout=30) as session:
            sender = CallbackSender(session, timeout=30, allow_private=True)
            payload = CallbackPayload(job_id="j", status=JobStatus.COMPLETED, completed_at=_now())
            started = time.monotonic()
            record = await sender.deliver(f"{server.url}/cb", None, payload, b"png")
        assert record.status is CallbackStatus.FAILED and record.status_code == 500
        assert record.error is not None and record.error.startswith("HTTP 500: xxx") and len(record.error) < 300
        assert time.monotonic() - started < 25  # not the 30 s timeout: it did not read the body to the end
    finally:
        server.stop()


def _app_with(handler) -> web.Application:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def _now():  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def test_credentials_in_a_url_are_refused_at_submit_and_never_echoed() -> None:
    """The outbound guard refuses a URL with credentials when it is used; submit refuses it first (422), and
    neither its message nor its fields quote them. A record stored before still echoes its URL without them."""
    from pydantic import ValidationError

    from kontext.delivery.guard import without_credentials
    from kontext.errors import invalid_from_validation

    for field in ("callback_url", "image_url"):
        with pytest.raises(ValidationError) as refused:
            _request(5, **{field: "http://alice:s3cret@hook.test/cb?x=1"})
        answer = invalid_from_validation(refused.value)
        assert [f["field"] for f in answer.fields] == [field] and "credentials" in answer.message
        assert "s3cret" not in repr((answer.message, answer.fields)) and "alice" not in answer.message
    assert without_credentials("http://alice:s3cret@hook.test/cb?x=1") == "http://hook.test/cb?x=1"


def _png(size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_server() -> ThreadedApp:
    async def image(request: web.Request) -> web.Response:
        return web.Response(body=_png(), content_type="image/png")

    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(8)  # longer than the miner's download deadlines here: it never answers in time
        return web.Response()

    def make() -> web.Application:
        app = web.Application()
        app.router.add_get("/img.png", image)
        app.router.add_get("/hang.png", never)
        return app

    return ThreadedApp(make).start()


async def test_the_admission_estimate_counts_jobs_whose_input_is_still_downloading(tmp_path: Path) -> None:
    """The validator always sends image_url: a job still downloading runs before a new one, so it is ahead."""
    from kontext.errors import DeadlineUnreachable
    from kontext.jobs.record import JobRecord

    server = _image_server()
    runtime = Runtime(make_settings(tmp_path, image_url_timeout_seconds=2.0, admission_deadline_seconds=3.0),
                      engine=FakeEngine())
    await runtime.start()
    try:
        runtime.service.admission.record(JobRecord(id="past", request=_request(1), status=JobStatus.COMPLETED,
                                                   started_at=100.0, finished_at=102.0))  # edits take ~2 s
        await runtime.service.submit(_request(10, image_url=f"{server.url}/hang.png"))  # alone: ~2 s, admitted
        with pytest.raises(DeadlineUnreachable, match="1 job"):
            await runtime.service.submit(_request(11))  # one downloading ahead: ~4 s, past the 3 s deadline
    finally:
        await runtime.stop()
        server.stop()


async def test_a_stuck_image_url_holds_up_no_other_job(tmp_path: Path) -> None:
    server = _image_server()
    runtime = Runtime(make_settings(tmp_path, image_url_timeout_seconds=3.0), engine=FakeEngine())
    await runtime.start()
    try:
        stuck = [(await runtime.service.submit(_request(10 + i, image_url=f"{server.url}/hang.png"))).job_id
                 for i in range(2)]
        normal = (await runtime.service.submit(_request(20))).job_id
        await until(lambda: _is(runtime, normal, JobStatus.COMPLETED), timeout=2.5)  # before any download ends
        assert [await _status(runtime, job_id) for job_id in stuck] == [JobStatus.QUEUED] * 2
        health = await runtime.service.health()
        assert health["queue"]["downloading"] == 2
        for job_id in stuck:
            await until(lambda: _is(runtime, job_id, JobStatus.FAILED))
            error = (await runtime.service.status(job_id)).error or ""
            assert error == "image_url: download timed out after 3s"
    finally:
        await runtime.stop()
        server.stop()


async def test_image_url_inputs_and_url_fallbacks_work(tmp_path: Path) -> None:
    server = _image_server()
    runtime = Runtime(make_settings(tmp_path), engine=FakeEngine())
    await runtime.start()
    try:
        by_url = (await runtime.service.submit(_request(30, image_url=f"{server.url}/img.png"))).job_id
        await until(lambda: _is(runtime, by_url, JobStatus.COMPLETED))
        status = await runtime.service.status(by_url)
        assert status.request.image_source is ImageSource.URL
        fallback = (await runtime.service.submit(_request(31, reference_job_id="edit-missing",
                                                           image_url=f"{server.url}/img.png"))).job_id
        await until(lambda: _is(runtime, fallback, JobStatus.COMPLETED))
        assert (await runtime.service.status(fallback)).request.image_source is ImageSource.URL_FALLBACK
        assert [call[0] for call in runtime.engines[0].calls[-2:]] == [_png(), _png()]  # type: ignore[attr-defined]
        broken = (await runtime.service.submit(_request(32, image_url=f"{server.url}/missing.png"))).job_id
        await until(lambda: _is(runtime, broken, JobStatus.FAILED))
        assert (await runtime.service.status(broken)).error == "image_url: download failed: HTTP 404"
    finally:
        await runtime.stop()
        server.stop()


async def _taken_ahead(runtime: Runtime, job_id: str) -> None:
    """Wait until a worker has taken ``job_id`` ahead (prepared, waiting for the device): the queue's order is
    what comes after it."""
    async def taken() -> bool:
        return runtime.workers is not None and job_id in runtime.workers.waiting_for_device()

    await until(taken, what=f"{job_id} taken ahead")


async def test_a_chained_job_is_capped_at_its_references_priority_and_never_overtakes_it(tmp_path: Path) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    runtime = Runtime(make_settings(tmp_path), engine=engine)
    await runtime.start()
    try:
        blocker = (await runtime.service.submit(_request(40))).job_id
        await until(lambda: _is(runtime, blocker, JobStatus.PROCESSING))
        await _taken_ahead(runtime, (await runtime.service.submit(_request(39))).job_id)  # the worker's lookahead
        reference = (await runtime.service.submit(_request(41), priority=1.0)).job_id
        chained = (await runtime.service.submit(_request(42, reference_job_id=reference), priority=500.0)).job_id
        other = (await runtime.service.submit(_request(43), priority=50.0)).job_id  # a higher stake band
        assert (await runtime.store.get(chained)).priority == 1.0  # type: ignore[union-attr]
        assert [await runtime.queue.position(j) for j in (other, reference, chained)] == [1, 2, 3]
        gate.set()
        await until(lambda: _is(runtime, chained, JobStatus.COMPLETED))
        done = {j: (await runtime.store.get(j)) for j in (reference, chained)}
        assert done[reference].finished_at <= done[chained].started_at  # type: ignore[union-attr,operator]
        assert (await runtime.service.status(chained)).request.image_source is ImageSource.REFERENCE_EDIT
    finally:
        gate.set()
        await runtime.stop()


async def test_the_retention_sweep_removes_orphaned_files(tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path, retention_hours=1), engine=FakeEngine())
    await runtime.start()
    try:
        job_id = (await runtime.service.submit(_request(50))).job_id
        await until(lambda: _is(runtime, job_id, JobStatus.COMPLETED))
        old = time.time() - 2 * 3600
        orphan_result = runtime.files.result_path("edit-orphan")  # a crash between the PNG and its record
        orphan_result.write_bytes(b"png")
        orphan_input = runtime.files.input_path("edit-orphan-input")
        orphan_input.write_bytes(b"img")
        fresh_orphan = runtime.files.result_path("edit-fresh")
        fresh_orphan.write_bytes(b"png")
        for path in (orphan_result, orphan_input, runtime.files.result_path(job_id)):
            os.utime(path, (old, old))
        removed = await runtime.upkeep.sweep()
        assert set(removed) == {"edit-orphan", "edit-orphan-input"}  # the live job's PNG stays: its record is young
        assert not orphan_result.exists() and not orphan_input.exists() and fresh_orphan.exists()
        assert runtime.files.result_path(job_id).exists()
    finally:
        await runtime.stop()


async def test_the_retention_loop_itself_sweeps_orphaned_files_while_the_miner_runs(tmp_path: Path) -> None:
    """The sweep above, run by the runtime's own loop every RETENTION_SWEEP_SECONDS (not only when called)."""
    orphan = None
    runtime = Runtime(make_settings(tmp_path, retention_hours=1, retention_sweep_seconds=0.1), engine=FakeEngine())
    await runtime.start()
    try:
        orphan = runtime.files.result_path("edit-left-by-a-crash")
        orphan.write_bytes(b"png")
        old = time.time() - 2 * 3600
        os.utime(orphan, (old, old))

        async def swept() -> bool:
            return not orphan.exists()

        await until(swept, timeout=10)
    finally:
        await runtime.stop()


async def test_a_callback_that_cannot_be_handled_is_logged_not_lost(tmp_path: Path, caplog) -> None:
    """notify runs in a background task nobody awaits: its failure must reach the log."""
    from kontext.delivery.notifier import CallbackNotifier
    from kontext.jobs.record import JobRecord
    from kontext.media.files import ImageFiles

    class BrokenStore:
        async def claim_callback(self, job_id: str) -> bool:
            raise RuntimeError("the store broke")

    notifier = CallbackNotifier(BrokenStore(), ImageFiles(tmp_path / "in", tmp_path / "out"),  # type: ignore[arg-type]
                                RecordingDeliverer(), image_url=lambda job_id: f"http://m/{job_id}.png")
    job = JobRecord(id="j-1", request=_request(1, callback_url="http://hook.test/x"), status=JobStatus.COMPLETED,
                    finished_at=time.time())
    assert await notifier.notify(job) is None
    [record] = [r for r in caplog.records if "callback for j-1 could not be handled" in r.getMessage()]
    assert record.exc_info is not None and "the store broke" in str(record.exc_info[1])
