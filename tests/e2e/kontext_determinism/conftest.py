"""Fixtures of the Kontext end-to-end suite.

Runs against ``ASYNC_MINER_URL`` when it is set (a miner you started, as the specification's
Testing section describes); otherwise starts a real sidecar process with the tiny real model on
a free loopback port. The webhook receiver binds ``ASYNC_CALLBACK_BIND_HOST`` (default
127.0.0.1) on the port of ``ASYNC_CALLBACK_BASE_URL`` (default: a free port), and the miner is
told to call ``ASYNC_CALLBACK_BASE_URL``.
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

import pytest
import requests
from PIL import Image

from tests.e2e.servers import CallbackReceiver, SidecarProcess

EXTERNAL_MINER = os.getenv("ASYNC_MINER_URL")
SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}
"""Small edits keep the tiny-model suite fast; an external miner gets the same requests."""


class MinerClient:
    def __init__(self, base_url: str, verify: Any = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.verify = verify
        """``requests``' TLS verification: a CA file for a miner behind a test certificate."""

    def post(self, **body: Any) -> requests.Response:
        return requests.post(f"{self.base_url}/edit", json=body, timeout=30, verify=self.verify)

    def edit(self, **body: Any) -> dict:
        for key, value in SMALL.items():
            body.setdefault(key, value)
        response = self.post(**body)
        assert response.status_code == 200, response.text
        return response.json()

    def status(self, job_id: str) -> dict:
        response = requests.get(f"{self.base_url}/edit/status/{job_id}", timeout=10, verify=self.verify)
        assert response.status_code == 200, response.text
        return response.json()

    def result(self, job_id: str) -> bytes:
        response = requests.get(f"{self.base_url}/edit/result/{job_id}", timeout=30, verify=self.verify)
        assert response.status_code == 200, response.text
        return response.content

    def wait(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(job_id)
            if status["status"] in ("completed", "failed"):
                return status
            time.sleep(0.05)
        raise TimeoutError(f"{job_id} did not finish in {timeout}s")

    def wait_callback(self, job_id: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(job_id)
            if "callback" in status:  # until the outcome is recorded
                return status
            time.sleep(0.05)
        raise TimeoutError(f"callback of {job_id} still pending")

    def edit_and_wait(self, **body: Any) -> tuple[dict, bytes]:
        job_id = self.edit(**body)["job_id"]
        status = self.wait(job_id)
        assert status["status"] == "completed", status
        return status, self.result(job_id)


@pytest.fixture(scope="session")
def sidecar(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Optional[SidecarProcess]]:
    if EXTERNAL_MINER:
        yield None
        return
    server = SidecarProcess(tiny_model_dir, tmp_path_factory.mktemp("miner") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def miner(sidecar: Optional[SidecarProcess]) -> MinerClient:
    client = MinerClient(EXTERNAL_MINER or sidecar.url)  # type: ignore[union-attr]
    health = requests.get(f"{client.base_url}/health", timeout=10).json()
    assert health["services"]["kontext_edit"] != "disabled", "Kontext editing must be enabled"
    return client


@pytest.fixture(scope="session")
def callback_receiver() -> Iterator[CallbackReceiver]:
    base = os.getenv("ASYNC_CALLBACK_BASE_URL")
    port = urlparse(base).port if base else 0
    host = os.getenv("ASYNC_CALLBACK_BIND_HOST", urlparse(base).hostname if base else "127.0.0.1")
    receiver = CallbackReceiver(host=host or "127.0.0.1", port=port or 0).start()
    receiver.public_base = (base or f"http://127.0.0.1:{receiver.port}").rstrip("/")  # type: ignore[attr-defined]
    try:
        yield receiver
    finally:
        receiver.stop()


def image_b64(size: tuple[int, int] = (64, 64), seed: int = 0) -> str:
    """A deterministic test picture (a gradient with a block), PNG, base64."""
    image = Image.new("RGB", size)
    pixels = image.load()
    for y in range(size[1]):
        for x in range(size[0]):
            pixels[x, y] = ((x * 4 + seed) % 256, (y * 4) % 256, ((x + y) * 2) % 256)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="session")
def sample_image_b64() -> str:
    return image_b64()
