"""Many devices in one host: one engine and worker per device, same bytes whichever runs a job, a failed
engine out of rotation while the others serve."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kontext.engine.devices import parse_devices, resolve_devices
from kontext.runtime import Runtime
from protocol import EditRequest, JobStatus
from tests.fakes import FakeEngine, png_bytes
from tests.unit.test_sidecar import make_settings
from tests.waiting import jobs_finished, until

IMAGE_B64 = base64.b64encode(png_bytes((40, 32), (200, 40, 90))).decode()


def test_device_lists() -> None:
    assert parse_devices("auto") == ["auto"]
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"] and parse_devices("cpu,cpu") == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="cpu, cuda:N"):
        parse_devices("gpu0")
    assert resolve_devices("cpu") == ["cpu"] and resolve_devices("cpu,cpu") == ["cpu", "cpu"]
    assert resolve_devices("auto") == ["cpu"]  # no GPU here: one CPU engine
    with pytest.raises(ValueError, match="KONTEXT_DEVICES|kontext_devices|cuda:N"):
        make_settings(Path("/tmp"), kontext_devices="tpu")


async def _finish_all(runtime: Runtime, ids: list[str]) -> None:
    await until(jobs_finished(runtime, *ids), timeout=60, what=f"{len(ids)} job(s) finished")


async def test_two_cpu_workers_give_the_same_bytes_whichever_runs_the_job(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kontext_model_path=str(tiny_model_dir), kontext_local_files_only=True,
                             kontext_devices="cpu,cpu", kontext_recipe="kontext-v1", kontext_self_check=False)
    runtime = Runtime(settings)
    await runtime.start()
    try:
        async def both_ready() -> bool:  # engines load one at a time: else the first could take every job
            return runtime.workers is not None and runtime.workers.serving() == 2

        await until(both_ready, timeout=120, what="both engines ready")
        request = EditRequest.model_validate({"prompt": "add a hat", "seed": 5, "image_b64": IMAGE_B64,
                                              "width": 64, "height": 64, "num_inference_steps": 2})
        ids = [(await runtime.service.submit(request)).job_id for _ in range(4)]  # one engine holds two at most
        await _finish_all(runtime, ids)
        statuses = [await runtime.service.status(job_id) for job_id in ids]
        assert all(status.status is JobStatus.COMPLETED for status in statuses)
        assert {status.worker for status in statuses} == {"w0", "w1"}  # both devices took work
        assert len({status.result_sha256 for status in statuses}) == 1  # and made the same bytes
        health = await runtime.service.health()
        assert [(w["name"], w["device"], w["state"]) for w in health["engine"]["workers"]] == [
            ("w0", "cpu", "ready"), ("w1", "cpu", "ready")]
        text = runtime.metrics.render().decode()
        assert 'kontext_jobs_run_total{status="completed",worker="w0"}' in text
        assert 'kontext_jobs_run_total{status="completed",worker="w1"}' in text
    finally:
        await runtime.stop()


async def test_a_failed_engine_leaves_the_rotation_and_the_others_serve(tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path), engines=[FakeEngine(fail_load="CUDA error: out of memory"),
                                                        FakeEngine()])
    await runtime.start()
    try:
        request = EditRequest.model_validate({"prompt": "p", "seed": 1, "image_b64": IMAGE_B64})
        ids = [(await runtime.service.submit(request)).job_id for _ in range(4)]
        await _finish_all(runtime, ids)
        statuses = [await runtime.service.status(job_id) for job_id in ids]
        assert [(s.status, s.worker) for s in statuses] == [(JobStatus.COMPLETED, "w1")] * 4
        health = await runtime.service.health()
        assert health["services"]["kontext_edit"] == "ready"
        assert [(w["name"], w["state"]) for w in health["engine"]["workers"]] == [("w0", "failed"), ("w1", "ready")]
        assert "out of memory" in health["engine"]["workers"][0]["error"]
        assert runtime.service.capacity()["img-h100_pcie"] is True  # one worker ready is enough
    finally:
        await runtime.stop()


async def test_when_every_engine_failed_queued_jobs_fail_with_the_reason(tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path, kontext_load="lazy"), engines=[FakeEngine(fail_load="no weights")])
    await runtime.start()
    try:
        request = EditRequest.model_validate({"prompt": "p", "seed": 1, "image_b64": IMAGE_B64})
        job_id = (await runtime.service.submit(request)).job_id
        await _finish_all(runtime, [job_id])
        status = await runtime.service.status(job_id)
        assert status.status is JobStatus.FAILED and status.error == "the edit engine failed to load: no weights"
        assert runtime.service.capacity()["img-h100_pcie"] is False
    finally:
        await runtime.stop()
