"""The sidecar over real HTTP with the real runtime (store, queue, worker) and a fake engine."""

from __future__ import annotations

import asyncio
import base64
import threading
from pathlib import Path
from typing import Any, Optional

import pytest
from aiohttp.test_utils import TestClient

from kontext.engine.engine import EngineState
from kontext.runtime import Runtime
from kontext.settings import Settings
from kontext.http.app import create_app
from tests.fakes import FAIL_PROMPT, FakeEngine, RecordingDeliverer, png_bytes
from tests.waiting import until, workers_running

IMAGE_B64 = base64.b64encode(png_bytes()).decode()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data", kontext_devices="cpu", max_image_pixels=512 * 512,
        max_request_bytes=2_000_000, retention_sweep_seconds=3600, outbound_allow_private=True,
        service_url="http://miner.test:8091",
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def start(aiohttp_client):
    """start(settings, engine) -> (client, runtime); the app starts and stops the runtime."""

    async def _start(settings: Settings, engine: Optional[FakeEngine] = None) -> tuple[TestClient, Runtime]:
        runtime = Runtime(settings, engine=engine or FakeEngine())
        client = await aiohttp_client(create_app(runtime, manage_runtime=True))
        return client, runtime

    return _start


async def submit(client: TestClient, **body: Any) -> dict:
    body.setdefault("prompt", "add a hat")
    body.setdefault("seed", 1)
    body.setdefault("num_inference_steps", 2)
    response = await client.post("/edit", json=body)
    assert response.status == 200, await response.text()
    return await response.json()


async def wait_finished(client: TestClient, job_id: str, timeout: float = 10) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await (await client.get(f"/edit/status/{job_id}")).json()
        if status["status"] in ("completed", "failed"):
            return status
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.02)


async def test_submit_status_result_and_image(start, settings: Settings) -> None:
    client, _ = await start(settings)
    accepted = await submit(client, image_b64=IMAGE_B64, seed=42)
    job_id = accepted["job_id"]
    assert job_id.startswith("edit-") and accepted["accepted"] is True and accepted["status"] == "queued"
    assert accepted["status_url"] == f"/edit/status/{job_id}"
    assert accepted["result_url"] == f"/edit/result/{job_id}"
    status = await wait_finished(client, job_id)
    assert status["status"] == "completed", status
    assert status["image_url"] == f"http://miner.test:8091/images/edits/{job_id}.png"
    assert status["request"]["image_source"] == "base64" and status["request"]["seed"] == 42
    assert status["callback"]["status"] == "skipped"
    assert status["completed_at"] and status["failed_at"] is None and status["recipe"] == "fake-v1"
    assert isinstance(status["queued_ms"], int) and status["queued_ms"] >= 0
    assert isinstance(status["run_ms"], int) and status["run_ms"] >= 0 and status["attempts"] == 1
    assert status["queue_position"] is None and status["progress"] is None
    result = await client.get(f"/edit/result/{job_id}")
    assert result.status == 200 and result.content_type == "image/png"
    png = await result.read()
    assert result.headers["X-Image-SHA256"] == status["result_sha256"]
    image = await client.get(f"/images/edits/{job_id}.png")
    assert await image.read() == png

    async def upload_dropped() -> bool:  # once the job's end is recorded (a restart still needs it before)
        return not (settings.inputs_dir / job_id).exists()

    await until(upload_dropped, what="the upload dropped after the job ended")


async def test_caller_job_id_and_conflict(start, settings: Settings) -> None:
    client, _ = await start(settings)
    assert (await submit(client, image_b64=IMAGE_B64, job_id="validator-7.job_1"))["job_id"] == "validator-7.job_1"
    again = await client.post("/edit", json={"prompt": "p", "seed": 1, "image_b64": IMAGE_B64,
                                             "job_id": "validator-7.job_1"})
    assert again.status == 409 and (await again.json())["error"] == "job_exists"


@pytest.mark.parametrize(
    "body, status, code, names",
    [
        (b"{not json", 400, "invalid_request", "not valid JSON"),
        (b"[1, 2]", 400, "invalid_request", "JSON object"),
        (b'{"prompt": "p", "image_b64": "QUJD"}', 422, "validation_error", "seed"),
        (b'{"prompt": "p", "seed": "x", "image_b64": "QUJD"}', 422, "validation_error", "seed"),
        (b'{"prompt": "p", "seed": 1, "guidance_scale": 99, "image_b64": "QUJD"}', 422, "validation_error",
         "guidance_scale"),
        (b'{"prompt": "p", "seed": 1}', 400, "invalid_request", "image_b64"),
        (b'{"prompt": "p", "seed": 1, "image_b64": "@@@"}', 400, "invalid_request", "image_b64"),
        (b'{"prompt": "p", "seed": 1, "image_b64": "aGVsbG8="}', 400, "invalid_request", "not a PNG"),
        (b'{"prompt": "p", "seed": 1, "reference_job_id": "edit-nope"}', 400, "invalid_request",
         "reference_job_id"),
        (b'{"prompt": "p", "seed": 1, "image_b64": "QUJD", "callback_url": "http://hook.test:99999/cb"}', 422,
         "validation_error", "callback_url: Value error, its port must be a number in 1..65535"),
        (b'{"prompt": "p", "seed": 1, "image_b64": "QUJD", "callback_url": "http://hook.test/c b"}', 422,
         "validation_error", "callback_url"),
        (b'{"prompt": "p", "seed": 1, "image_b64": "QUJD", "callback_url": "http://hook.test/cb\\r\\nX: 1"}', 422,
         "validation_error", "callback_url"),
        (b'{"prompt": "p", "seed": 1, "image_b64": "QUJD", "callback_secret": "s\\r\\nX-Injected: 1"}', 422,
         "validation_error", "callback_secret"),
        (b'{"prompt": "p", "seed": 1, "image_url": "http://images.test:99999/in.png"}', 422,
         "validation_error", "image_url"),
        (b'{"prompt": "p", "seed": 1, "image_b64": "%s"}' % base64.b64encode(png_bytes((4096, 1))), 400,
         "invalid_request", "image_b64: image is 4096x1, too small or too narrow to edit"),
    ],
)
async def test_bad_requests_get_named_json_errors(start, settings, body, status, code, names) -> None:
    client, _ = await start(settings)
    response = await client.post("/edit", data=body, headers={"Content-Type": "application/json"})
    assert response.status == status
    error = await response.json()
    assert error["error"] == code and names in error["message"]


async def test_limits_answer_413(start, tmp_path: Path) -> None:
    client, _ = await start(make_settings(tmp_path, max_image_pixels=64 * 64))
    big = base64.b64encode(png_bytes((128, 128))).decode()
    response = await client.post("/edit", json={"prompt": "p", "seed": 1, "image_b64": big})
    assert response.status == 413 and "pixels" in (await response.json())["message"]
    huge = await client.post("/edit", data=b"x" * 3_000_000)
    assert huge.status == 413 and (await huge.json())["error"] == "payload_too_large"


@pytest.mark.parametrize("path, status", [
    ("/edit/status/edit-unknown", 404), ("/edit/status/..", 404), ("/edit/status/%2E%2E%2Fjobs", 404),
    ("/edit/result/edit-unknown", 404), ("/images/edits/..%2Fjobs.sqlite3", 404),
    ("/images/edits/x.jpg", 404), ("/nope", 404),
])
async def test_unknown_paths_answer_json(start, settings, path: str, status: int) -> None:
    client, _ = await start(settings)
    response = await client.get(path)
    assert response.status == status and "message" in await response.json()


async def test_finished_job_shows_no_progress_even_before_its_worker_clears_it(start, settings) -> None:
    """A worker's last progress (or a shared queue's last heartbeat) can outlive the job's end by a moment; a
    status read then (seen in CI) must not show a finished job as still stepping."""
    client, runtime = await start(settings)
    job_id = (await submit(client, image_b64=IMAGE_B64))["job_id"]
    assert (await wait_finished(client, job_id))["status"] == "completed"
    worker = runtime.workers.workers[0]
    from kontext.jobs.runner import HeldJob

    worker.held[job_id] = HeldJob(job_id, steps=2, step=2, on_device=True)  # the gap, held open
    assert worker.progress(job_id) == (2, 2)
    status = await (await client.get(f"/edit/status/{job_id}")).json()
    assert status["status"] == "completed" and status["progress"] is None


async def test_wrong_method_is_json_405(start, settings) -> None:
    client, _ = await start(settings)
    response = await client.get("/edit")
    assert response.status == 405 and (await response.json())["error"] == "method_not_allowed"


async def test_running_job_shows_progress_and_result_is_not_ready(start, settings) -> None:
    gate = threading.Event()
    client, _ = await start(settings, FakeEngine(gate=gate))
    first = (await submit(client, image_b64=IMAGE_B64, num_inference_steps=4))["job_id"]
    second = (await submit(client, image_b64=IMAGE_B64, seed=2))["job_id"]
    for _ in range(200):
        status = await (await client.get(f"/edit/status/{first}")).json()
        if status["status"] == "processing" and status["progress"]:
            break
        await asyncio.sleep(0.01)
    assert status["progress"] == {"step": 1, "total": 4} and status["started_at"]
    queued = await (await client.get(f"/edit/status/{second}")).json()
    assert queued["status"] == "queued" and queued["queue_position"] == 1
    assert "kontext_queue_depth 1.0" in await (await client.get("/metrics")).text()  # at once, not polled
    not_ready = await client.get(f"/edit/result/{first}")
    assert not_ready.status == 409 and "processing" in (await not_ready.json())["message"]
    gate.set()
    assert (await wait_finished(client, second))["status"] == "completed"


async def test_chaining_fallback_and_pending_reference(start, settings) -> None:
    client, runtime = await start(settings)
    first = (await submit(client, image_b64=IMAGE_B64))["job_id"]
    second = (await submit(client, reference_job_id=first, seed=2))["job_id"]  # first still queued
    third = (await submit(client, reference_job_id=second, seed=3))["job_id"]
    fallback = (await submit(client, reference_job_id="edit-missing", image_b64=IMAGE_B64))["job_id"]
    statuses = [await wait_finished(client, j) for j in (first, second, third, fallback)]
    assert [s["status"] for s in statuses] == ["completed"] * 4
    assert [s["request"]["image_source"] for s in statuses] == [
        "base64", "reference_edit", "reference_edit", "base64_fallback"]
    engine = runtime.engines[0]
    first_png = await (await client.get(f"/edit/result/{first}")).read()
    chained = [image for image, params in engine.calls if params.seed == 2]  # type: ignore[attr-defined]
    assert chained == [first_png]  # the chained job edited the first result


async def test_a_fallback_with_both_image_b64_and_image_url_edits_and_names_the_b64(start, settings) -> None:
    """image_b64 comes before image_url, at submit and at run time alike (only the b64 is stored ahead)."""
    gate = threading.Event()
    client, runtime = await start(settings, FakeEngine(gate=gate))
    await submit(client, image_b64=IMAGE_B64, seed=5)  # held at its first step: the next jobs wait behind it
    await until(workers_running(runtime, 1), what="the blocker on the device")
    filler = (await submit(client, image_b64=IMAGE_B64, seed=6))["job_id"]  # taken ahead: the rest stay queued

    async def taken_ahead() -> bool:
        return filler in runtime.workers.waiting_for_device()

    await until(taken_ahead, what="the next job taken ahead")
    doomed = (await submit(client, image_b64=IMAGE_B64, prompt=FAIL_PROMPT))["job_id"]
    try:
        both = (await submit(client, reference_job_id=doomed, image_b64=IMAGE_B64,
                             image_url="http://127.0.0.1:9/never-fetched.png"))["job_id"]
        status = await (await client.get(f"/edit/status/{both}")).json()
        assert status["request"]["image_source"] == "reference_edit"  # the reference is still queued
    finally:
        gate.set()
    status = await wait_finished(client, both)
    assert status["status"] == "completed" and status["request"]["image_source"] == "base64_fallback"
    assert runtime.engines[0].calls[-1][0] == base64.b64decode(IMAGE_B64)


async def test_reference_that_fails_later_uses_fallback_or_fails_clearly(start, settings) -> None:
    gate = threading.Event()
    client, runtime = await start(settings, FakeEngine(gate=gate))
    blocker = (await submit(client, image_b64=IMAGE_B64, seed=90))["job_id"]
    await until(workers_running(runtime, 1), what="the blocker on the device")
    filler = (await submit(client, image_b64=IMAGE_B64, seed=91))["job_id"]  # taken ahead: the rest stay queued

    async def taken_ahead() -> bool:
        return filler in runtime.workers.waiting_for_device()

    await until(taken_ahead, what="the next job taken ahead")
    doomed = (await submit(client, image_b64=IMAGE_B64, prompt=FAIL_PROMPT))["job_id"]
    orphan = (await submit(client, reference_job_id=doomed))["job_id"]  # the reference has not failed yet
    rescued = (await submit(client, reference_job_id=doomed, image_b64=IMAGE_B64))["job_id"]
    gate.set()
    await wait_finished(client, blocker)
    assert (await wait_finished(client, doomed))["error"] == "input image: this prompt always fails (test double)"
    orphan_status = await wait_finished(client, orphan)
    assert orphan_status["status"] == "failed"
    assert f"reference_job_id {doomed} failed, and no fallback image was given" in orphan_status["error"]
    rescued_status = await wait_finished(client, rescued)
    assert rescued_status["status"] == "completed"
    assert rescued_status["request"]["image_source"] == "base64_fallback"
    refused = await client.post("/edit", json={"prompt": "p", "seed": 1, "reference_job_id": doomed})
    assert refused.status == 400 and "failed" in (await refused.json())["message"]


async def test_disabled_editing_answers_503(start, tmp_path: Path) -> None:
    client, _ = await start(make_settings(tmp_path, enable_kontext_edit=False))
    response = await client.post("/edit", json={"prompt": "p", "seed": 1, "image_b64": IMAGE_B64})
    assert response.status == 503 and "ENABLE_KONTEXT_EDIT" in (await response.json())["message"]
    health = await (await client.get("/health")).json()
    assert health["services"]["kontext_edit"] == "disabled"


async def test_queue_bound_answers_503_with_retry_after(start, tmp_path: Path) -> None:
    gate = threading.Event()
    client, runtime = await start(make_settings(tmp_path, max_queue=2), FakeEngine(gate=gate))
    accepted = [(await submit(client, image_b64=IMAGE_B64, seed=0))["job_id"]]

    await until(workers_running(runtime, 1), what="the first job running")
    accepted += [(await submit(client, image_b64=IMAGE_B64, seed=s))["job_id"] for s in (1, 2)]
    # one running + two waiting; the next is refused
    refused = await client.post("/edit", json={"prompt": "p", "seed": 9, "image_b64": IMAGE_B64})
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert (await refused.json())["error"] == "queue_full"
    gate.set()
    for job_id in accepted:
        assert (await wait_finished(client, job_id))["status"] == "completed"


async def test_engine_load_failure_is_reported(start, settings) -> None:
    client, _ = await start(settings, FakeEngine(fail_load="no weights at /models/x"))
    for _ in range(100):
        health = await (await client.get("/health")).json()
        if health["services"]["kontext_edit"] == "failed":
            break
        await asyncio.sleep(0.01)
    assert health["services"]["kontext_edit"] == "failed" and "no weights" in health["engine_error"]
    response = await client.post("/edit", json={"prompt": "p", "seed": 1, "image_b64": IMAGE_B64})
    assert response.status == 503 and "no weights" in (await response.json())["message"]


async def test_health_shape(start, settings) -> None:
    """Loading first, then ready, with the engine, its worker and the queue described exactly."""
    loading = threading.Event()

    class SlowLoad(FakeEngine):
        def load(self) -> None:
            self.state = EngineState.LOADING
            loading.wait(10)
            super().load()

    client, _ = await start(settings, SlowLoad())
    for _ in range(200):
        health = await (await client.get("/health")).json()
        if health["services"]["kontext_edit"] == "loading":
            break
        await asyncio.sleep(0.01)
    assert health["services"]["kontext_edit"] == "loading" and health["status"] == "ok" and health["accepting"]
    loading.set()
    for _ in range(200):
        health = await (await client.get("/health")).json()
        if health["services"]["kontext_edit"] == "ready":
            break
        await asyncio.sleep(0.01)
    assert health["services"]["kontext_edit"] == "ready" and health["engine"]["state"] == "ready"
    assert health["queue"] == {"depth": 0, "downloading": 0, "max": settings.max_queue}
    assert [w["name"] for w in health["engine"]["workers"]] == ["w0"]
    assert health["engine"]["workers"][0]["state"] == "ready" and health["engine"]["workers"][0]["current_job"] is None
    assert health["jobs"] == {} and "engine_error" not in health


async def test_callbacks_are_recorded(aiohttp_client, settings) -> None:
    deliverer = RecordingDeliverer()
    runtime = Runtime(settings, engine=FakeEngine(), sender=deliverer)
    client = await aiohttp_client(create_app(runtime, manage_runtime=True))
    job = (await submit(client, image_b64=IMAGE_B64, callback_url="http://hook.test/cb",
                        callback_secret="s3cret"))["job_id"]
    expired = (await submit(client, image_b64=IMAGE_B64, callback_url="http://hook.test/cb",
                            expiry="2000-01-01T00:00:00Z"))["job_id"]
    await wait_finished(client, job)
    await wait_finished(client, expired)

    async def callback_settled(job_id: str) -> dict:
        latest: dict = {}

        async def settled() -> bool:
            latest.update(await (await client.get(f"/edit/status/{job_id}")).json())
            return "callback" in latest

        await until(settled, what=f"the callback of {job_id} recorded")
        return latest

    status = await callback_settled(job)
    assert status["callback"]["status"] == "delivered" and status["callback"]["payload_status"] == "completed"
    assert "s3cret" not in str(status)
    url, secret, payload, png = deliverer.sent[0]
    assert secret == "s3cret" and payload.image_url == status["image_url"] and png
    late = await callback_settled(expired)
    assert late["callback"]["status"] == "expired"
    assert len(deliverer.sent) == 1


async def test_metrics_count_jobs_rejections_and_queue(start, settings) -> None:
    client, _ = await start(settings)
    job_id = (await submit(client, image_b64=IMAGE_B64))["job_id"]
    await wait_finished(client, job_id)
    await client.post("/edit", json={"prompt": "p"})  # a 422
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    assert 'kontext_jobs_finished_total{status="completed"} 1.0' in text
    assert "kontext_jobs_submitted_total 1.0" in text
    assert 'kontext_requests_rejected_total{code="validation_error"} 1.0' in text
    assert "kontext_queue_depth 0.0" in text
    assert 'kontext_edit_seconds_count{worker="w0"} 1.0' in text
    assert 'kontext_engine_ready{worker="w0"} 1.0' in text
    assert 'kontext_jobs_run_total{status="completed",worker="w0"} 1.0' in text


async def test_lazy_loading_accepts_then_loads_on_the_first_job(start, tmp_path: Path) -> None:
    engine = FakeEngine()
    client, _ = await start(make_settings(tmp_path, kontext_load="lazy"), engine)
    health = await (await client.get("/health")).json()
    assert health["services"]["kontext_edit"] == "ready" and engine.state is EngineState.UNLOADED
    job_id = (await submit(client, image_b64=IMAGE_B64))["job_id"]
    assert (await wait_finished(client, job_id))["status"] == "completed" and engine.state is EngineState.READY


async def test_an_eager_start_is_not_reported_ready_before_its_engine_is(tmp_path: Path) -> None:
    """/health said ``ready`` while an eager engine had not begun to load (an unloaded engine counted as lazy
    loading's "ready"): a harness waiting for ready then found /capacity false, as a validator would have."""
    release = threading.Event()

    class SlowLoad(FakeEngine):
        def load(self) -> None:
            release.wait(30)
            super().load()

    engine = SlowLoad()
    runtime = Runtime(make_settings(tmp_path), engine=engine)  # KONTEXT_LOAD: eager, the default
    await runtime.start()
    try:
        health = await runtime.service.health()
        assert health["services"]["kontext_edit"] == "loading" and engine.state is not EngineState.READY
        assert runtime.service.capacity()["img-h100_pcie"] is False
        release.set()

        async def ready() -> bool:
            return (await runtime.service.health())["services"]["kontext_edit"] == "ready"

        await until(ready, what="the engine ready")
        assert runtime.service.capacity()["img-h100_pcie"] is True
    finally:
        release.set()
        await runtime.stop()


async def test_each_refused_request_is_logged_once_without_secrets(start, settings, caplog) -> None:
    import logging

    client, _ = await start(settings)
    caplog.set_level(logging.INFO, logger="kontext.http.errors")
    await client.post("/edit", json={"prompt": "p", "seed": "x", "callback_secret": "hunter2", "image_b64": "QQ=="})
    lines = [r.getMessage() for r in caplog.records if r.name == "kontext.http.errors"]
    assert len(lines) == 1 and "422 validation_error" in lines[0] and "seed" in lines[0]
    assert "hunter2" not in caplog.text
