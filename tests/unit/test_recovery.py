"""Restarts forget nothing: queued and interrupted jobs run again; crash loops end in a clear failure."""

from __future__ import annotations

import asyncio
import base64
import threading
from pathlib import Path

from kontext.runtime import Runtime
from protocol import EditRequest, JobStatus
from tests.fakes import FakeEngine, RecordingDeliverer, png_bytes
from tests.unit.test_sidecar import make_settings
from tests.waiting import jobs_finished, until

IMAGE_B64 = base64.b64encode(png_bytes()).decode()


def _request(seed: int, **extra: object) -> EditRequest:
    return EditRequest.model_validate({"prompt": "p", "seed": seed, "image_b64": IMAGE_B64,
                                       "num_inference_steps": 2, **extra})


async def _wait(runtime: Runtime, job_id: str) -> JobStatus:
    await until(jobs_finished(runtime, job_id), what=f"{job_id} finished")
    return (await runtime.service.status(job_id)).status


async def _wait_processing(runtime: Runtime, job_id: str) -> None:
    async def processing() -> bool:
        return (await runtime.service.status(job_id)).status is JobStatus.PROCESSING

    await until(processing, what=f"{job_id} started")


async def test_restart_runs_queued_and_interrupted_jobs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    gate = threading.Event()
    first = Runtime(settings, engine=FakeEngine(gate=gate))
    await first.start()
    ids = [(await first.service.submit(_request(seed))).job_id for seed in range(3)]
    await _wait_processing(first, ids[0])
    await first.stop(grace_seconds=0.05)  # the running job is interrupted mid-flight
    gate.set()

    second = Runtime(settings, engine=FakeEngine())
    await second.start()
    try:
        assert [await _wait(second, job_id) for job_id in ids] == [JobStatus.COMPLETED] * 3
        interrupted = await second.service.status(ids[0])
        assert interrupted.attempts == 2
        assert [(await second.service.status(j)).attempts for j in ids[1:]] == [1, 1]
        results = {(await second.service.result(j)).sha256 for j in ids}
        assert len(results) == 3
    finally:
        await second.stop()


async def test_a_job_interrupted_too_often_is_failed_not_looped(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_attempts=1)
    gate = threading.Event()
    first = Runtime(settings, engine=FakeEngine(gate=gate))
    await first.start()
    job_id = (await first.service.submit(_request(1))).job_id
    await _wait_processing(first, job_id)
    await first.stop(grace_seconds=0.05)
    gate.set()

    second = Runtime(settings, engine=FakeEngine())
    await second.start()
    try:
        assert await _wait(second, job_id) is JobStatus.FAILED
        status = await second.service.status(job_id)
        assert "interrupted 1 time(s)" in (status.error or "")
    finally:
        await second.stop()


async def test_graceful_stop_lets_the_running_job_finish(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    gate = threading.Event()
    runtime = Runtime(settings, engine=FakeEngine(gate=gate))
    await runtime.start()
    job_id = (await runtime.service.submit(_request(5))).job_id
    await _wait_processing(runtime, job_id)
    threading.Timer(0.2, gate.set).start()
    await runtime.stop(grace_seconds=10)
    again = Runtime(settings, engine=FakeEngine())
    await again.start()
    try:
        status = await again.service.status(job_id)
        assert status.status is JobStatus.COMPLETED and status.attempts == 1
    finally:
        await again.stop()


async def test_unsent_callback_is_sent_after_restart(tmp_path: Path) -> None:
    """A callback the process never began (it waited for CALLBACK_NOT_BEFORE_SECONDS) is sent at the next start."""
    settings = make_settings(tmp_path, callback_not_before_seconds=30, callback_timeout_seconds=60)
    runtime = Runtime(settings, engine=FakeEngine(), sender=RecordingDeliverer())
    await runtime.start()
    job_id = (await runtime.service.submit(_request(1, callback_url="http://hook.test/x"))).job_id
    await _wait(runtime, job_id)
    await asyncio.wait_for(runtime.stop(), 5)  # a callback not yet begun does not hold the shutdown
    assert (await _status_callback(settings, job_id)) == "pending"

    deliverer = RecordingDeliverer()
    again = Runtime(make_settings(tmp_path), engine=FakeEngine(), sender=deliverer)
    await again.start()  # sends what is still pending
    try:
        await again.notifier.resend_pending()  # a second call must not send it twice
        async def called_back() -> bool:
            return (await again.service.status(job_id)).callback is not None

        await until(called_back, what="the callback's outcome recorded")
        callback = (await again.service.status(job_id)).callback
        assert callback is not None and callback.status.value == "delivered"
        assert [sent[2].job_id for sent in deliverer.sent] == [job_id]
    finally:
        await again.stop()


async def test_a_callback_cut_off_mid_post_is_failed_not_sent_twice(tmp_path: Path) -> None:
    """At most one POST per job: a process that stops during delivery leaves it ``sending``; the next
    start records it failed with the reason, and never POSTs it again (the receiver may have it)."""
    settings = make_settings(tmp_path, callback_timeout_seconds=0.3)
    started = asyncio.Event()

    class Hanging(RecordingDeliverer):
        async def deliver(self, *args, **kwargs):  # the POST is under way when the process stops
            started.set()
            await asyncio.Event().wait()

    runtime = Runtime(settings, engine=FakeEngine(), sender=Hanging())
    await runtime.start()
    job_id = (await runtime.service.submit(_request(1, callback_url="http://hook.test/x"))).job_id
    await asyncio.wait_for(started.wait(), 10)
    await runtime.stop()
    assert (await _status_callback(settings, job_id)) == "sending"

    deliverer = RecordingDeliverer()
    again = Runtime(settings, engine=FakeEngine(), sender=deliverer)
    await again.start()
    try:
        callback = (await again.service.status(job_id)).callback
        assert callback is not None and callback.status.value == "failed" and "not sent again" in (callback.error or "")
        assert callback.payload_status is JobStatus.COMPLETED and callback.attempted_at is not None
        await asyncio.sleep(0.1)
        assert deliverer.sent == []
    finally:
        await again.stop()


async def test_a_shutdown_during_the_claim_lets_that_callback_be_sent(tmp_path: Path, monkeypatch) -> None:
    """The shutdown cancelled a callback task while its claim ran in the store's thread: the claim committed
    'sending', no POST followed, and the next start recorded a POST that never happened as cut off."""
    settings = make_settings(tmp_path, callback_timeout_seconds=5)
    deliverer = RecordingDeliverer()
    runtime = Runtime(settings, engine=FakeEngine(), sender=deliverer)
    await runtime.start()
    try:
        real_claim = runtime.store.claim_callback
        claiming = asyncio.Event()

        async def slow_claim(job_id: str) -> bool:  # as the store's thread: once begun, it commits
            async def commit() -> bool:
                claiming.set()
                await asyncio.sleep(0.3)
                return await real_claim(job_id)

            return await asyncio.shield(asyncio.ensure_future(commit()))

        monkeypatch.setattr(runtime.store, "claim_callback", slow_claim)
        job_id = (await runtime.service.submit(_request(1, callback_url="http://hook.test/x"))).job_id
        await asyncio.wait_for(claiming.wait(), 10)
    finally:
        await runtime.stop()
    assert [sent[2].job_id for sent in deliverer.sent] == [job_id]  # the one POST happened
    assert (await _status_callback(settings, job_id)) == "delivered"


async def _status_callback(settings, job_id: str) -> str:
    from tests.e2e.servers import read_stored_job

    return (await read_stored_job(settings.database_path, job_id)).callback_status.value


async def test_retention_sweep_answers_410(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, retention_hours=0.0001)
    runtime = Runtime(settings, engine=FakeEngine())
    await runtime.start()
    try:
        job_id = (await runtime.service.submit(_request(1))).job_id
        await _wait(runtime, job_id)
        await asyncio.sleep(0.5)
        assert await runtime.upkeep.sweep() == [job_id]
        assert not runtime.files.result_path(job_id).exists()
        from kontext.errors import JobExpired
        from kontext.http.errors import answer

        for call in (runtime.service.status, runtime.service.result):
            try:
                await call(job_id)
            except JobExpired as exc:
                assert "expired" in exc.message and answer(exc)[0] == 410
            else:
                raise AssertionError("swept job still answered")
    finally:
        await runtime.stop()
