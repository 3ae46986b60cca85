"""Chaining, fallbacks, every bad-input case, and restarts that forget no job."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests
from PIL import Image

from tests.e2e.kontext_determinism.conftest import EXTERNAL_MINER, MinerClient, image_b64
from tests.e2e.servers import SidecarProcess, stored_job
from tests.waiting import poll

pytestmark = pytest.mark.e2e


def test_chain_of_three(miner: MinerClient, sample_image_b64: str) -> None:
    first, png1 = miner.edit_and_wait(prompt="Add a warm red tint", image_b64=sample_image_b64, seed=100)
    second, png2 = miner.edit_and_wait(prompt="Add blue highlights", reference_job_id=first["id"],
                                       image_b64=sample_image_b64, seed=101)
    third, png3 = miner.edit_and_wait(prompt="Increase contrast", reference_job_id=second["id"],
                                      image_b64=sample_image_b64, seed=102)
    assert [s["request"]["image_source"] for s in (first, second, third)] == [
        "base64", "reference_edit", "reference_edit"]
    # The chained edit really started from the previous result: re-running edit 2 with the
    # first result uploaded as base64 gives the same bytes.
    again, png2_again = miner.edit_and_wait(prompt="Add blue highlights",
                                            image_b64=base64.b64encode(png1).decode(), seed=101)
    assert png2_again == png2 and len({png1, png2, png3}) == 3


def test_unknown_reference_uses_the_fallback(miner: MinerClient, sample_image_b64: str) -> None:
    status, png = miner.edit_and_wait(prompt="Add purple glow", reference_job_id="definitely-does-not-exist",
                                      image_b64=sample_image_b64, seed=42)
    assert status["request"]["image_source"] == "base64_fallback"
    _, direct = miner.edit_and_wait(prompt="Add purple glow", image_b64=sample_image_b64, seed=42)
    assert png == direct


def _error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"] and body["message"]
    return body


def test_missing_image_sources_is_400(miner: MinerClient) -> None:
    body = _error(miner.post(prompt="This should fail", seed=42), 400)
    assert "image_b64" in body["message"]


def test_unknown_reference_without_fallback_is_400(miner: MinerClient) -> None:
    body = _error(miner.post(prompt="p", seed=1, reference_job_id="edit-none"), 400)
    assert "reference_job_id" in body["message"]


def test_missing_seed_is_422(miner: MinerClient, sample_image_b64: str) -> None:
    body = _error(miner.post(prompt="Missing seed", image_b64=sample_image_b64), 422)
    assert any(f["field"] == "seed" for f in body["fields"])


@pytest.mark.parametrize("change, field", [
    ({"seed": "forty-two"}, "seed"),
    ({"seed": -5}, "seed"),
    ({"guidance_scale": 0.5}, "guidance_scale"),
    ({"guidance_scale": 21}, "guidance_scale"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 101}, "num_inference_steps"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"width": 100, "height": 64}, "width"),
    ({"callback_url": "not a url"}, "callback_url"),
    ({"expiry": "soon"}, "expiry"),
    ({"job_id": "../../etc"}, "job_id"),
])
def test_schema_errors_name_the_field(miner: MinerClient, sample_image_b64: str, change: dict, field: str) -> None:
    body = _error(miner.post(**{"prompt": "p", "seed": 1, "image_b64": sample_image_b64, **change}), 422)
    assert field in {f["field"] for f in body["fields"]}


@pytest.mark.parametrize("payload, status, words", [
    (b"{broken", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b'"a string"', 400, "JSON object"),
    (b'{"prompt": "p", "seed": 1, "image_b64": "%%%"}', 400, "base64"),
    (b'{"prompt": "p", "seed": 1, "image_b64": "aGVsbG8gd29ybGQ="}', 400, "not a PNG"),
])
def test_malformed_bodies(miner: MinerClient, payload: bytes, status: int, words: str) -> None:
    response = requests.post(f"{miner.base_url}/edit", data=payload, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert words in _error(response, status)["message"]


def test_oversized_image_is_refused(miner: MinerClient) -> None:
    huge = Image.new("RGB", (5000, 5000))  # 25 MP, over the default 16.7 MP limit
    buffer = io.BytesIO()
    huge.save(buffer, format="PNG")
    response = miner.post(prompt="p", seed=1, image_b64=base64.b64encode(buffer.getvalue()).decode())
    assert "pixels" in _error(response, 413)["message"]


@pytest.mark.parametrize("path", ["/edit/status/..%2F..%2Fetc%2Fpasswd", "/edit/result/..",
                                  "/images/edits/..%2Fjobs.sqlite3", "/edit/status/edit-unknown"])
def test_bad_paths_are_json_404(miner: MinerClient, path: str) -> None:
    _error(requests.get(f"{miner.base_url}{path}", timeout=10), 404)


@dataclass
class Restarted:
    """A miner SIGKILLed while one job ran and others waited, then started again on its data and port."""

    server: SidecarProcess
    data: Path
    ids: list[str]

    @property
    def client(self) -> MinerClient:
        return MinerClient(self.server.url)


@pytest.fixture(scope="module")
def restarted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restarted]:
    if EXTERNAL_MINER:
        pytest.skip("kills and restarts its own process")
    data = tmp_path_factory.mktemp("killed") / "data"
    server = SidecarProcess(tiny_model_dir, data).start()
    client = MinerClient(server.url)
    ids = []
    for i in range(3):
        longer = {"width": 512, "height": 512, "num_inference_steps": 3} if i == 0 else {}  # the one the kill cuts off
        ids.append(client.edit(prompt=f"edit {i}", image_b64=image_b64(seed=i), seed=i, **longer)["job_id"])
    try:
        poll(lambda: client.status(ids[0])["status"] != "queued", 60, "the first job taken", every=0.01)
    finally:
        server.kill()  # SIGKILL while one job runs and the others wait
    again = SidecarProcess(tiny_model_dir, data, port=server.port).start()
    try:
        yield Restarted(again, data, ids)
    finally:
        again.stop()


def test_kill_9_with_queued_jobs_loses_nothing(restarted: Restarted) -> None:
    client = restarted.client
    statuses = [client.wait(job_id) for job_id in restarted.ids]
    assert [s["status"] for s in statuses] == ["completed"] * len(restarted.ids), statuses
    for job_id, status in zip(restarted.ids, statuses):
        png = client.result(job_id)
        with Image.open(io.BytesIO(png)) as image:
            image.verify()  # not truncated
        assert status["result_sha256"]
    assert not list((restarted.data / "edits").glob(".*.tmp"))


def test_sigterm_finishes_the_running_job_and_exits_cleanly(restarted: Restarted) -> None:
    """The module's last test: it ends the restarted process."""
    client = restarted.client
    job_id = client.edit(prompt="p", image_b64=image_b64(), seed=3, width=512, height=512,
                         num_inference_steps=4)["job_id"]
    poll(lambda: client.status(job_id)["status"] != "queued", 60, "the job taken", every=0.01)
    assert restarted.server.terminate(timeout=60) == 0
    job = stored_job(restarted.data, job_id)  # what the next start finds: done, so not run again
    assert job.status.value == "completed" and job.attempts == 1
    assert (restarted.data / "edits" / f"{job_id}.png").is_file()
