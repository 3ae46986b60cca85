"""Same request and seed -> the same PNG bytes, across jobs and across processes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests

from tests.e2e.kontext_determinism.conftest import EXTERNAL_MINER, MinerClient
from tests.e2e.servers import InProcessSidecar

pytestmark = pytest.mark.e2e


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def red_hat(miner: MinerClient, sample_image_b64: str) -> tuple[dict, bytes]:
    """One edit of the base request: the tests below compare theirs with it."""
    return miner.edit_and_wait(prompt="Add a red hat", image_b64=sample_image_b64, seed=42)


def test_same_seed_same_png(miner: MinerClient, sample_image_b64: str, red_hat: tuple[dict, bytes]) -> None:
    first, png1 = red_hat
    second, png2 = miner.edit_and_wait(prompt="Add a red hat", image_b64=sample_image_b64, seed=42)
    assert first["id"] != second["id"]  # two jobs
    assert png1 == png2 and _sha(png1) == first["result_sha256"] == second["result_sha256"]
    assert first["recipe"] and first["recipe"] == second["recipe"]


@pytest.mark.parametrize("change", [{"seed": 43}, {"prompt": "Make it blue"}, {"guidance_scale": 7.0}])
def test_a_different_input_gives_a_different_png(miner: MinerClient, sample_image_b64: str, change: dict,
                                                 red_hat: tuple[dict, bytes]) -> None:
    _, reference = red_hat
    _, changed = miner.edit_and_wait(**{"prompt": "Add a red hat", "image_b64": sample_image_b64, "seed": 42, **change})
    assert _sha(reference) != _sha(changed)


def test_result_is_a_png_of_the_size_the_recipe_gives(miner: MinerClient, sample_image_b64: str) -> None:
    """kontext-v1 makes the requested size; reference-v1 records width/height as ignored and makes the
    pipeline's default. Either way the status names the size, and the headers the hashes."""
    from io import BytesIO

    from PIL import Image

    status, png = miner.edit_and_wait(prompt="p", image_b64=sample_image_b64, seed=5, width=96, height=64)
    with Image.open(BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (status["result_width"], status["result_height"])
        pixels = hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
    if status["ignored_fields"]:
        assert status["ignored_fields"] == ["width", "height"] and status["recipe"] == "reference-v1"
    else:
        assert image.size == (96, 64)
    assert pixels == status["result_pixels_sha256"]
    result = requests.get(miner.base_url + status["result_url"], timeout=10)
    assert result.headers["X-Image-SHA256"] == status["result_sha256"] == _sha(result.content)
    assert result.headers["X-Recipe"] == status["recipe"] and result.headers["X-Job-ID"] == status["id"]


@pytest.mark.skipif(bool(EXTERNAL_MINER), reason="starts its own miner")
def test_same_request_after_a_restart_gives_the_same_png(
    tiny_model_dir: Path, tmp_path: Path, miner: MinerClient, sample_image_b64: str
) -> None:
    """A miner started afresh (its runtime and engine in this test's process, not the session miner's) makes the
    session miner's bytes."""
    request = {"prompt": "Add a red hat", "image_b64": sample_image_b64, "seed": 1234}
    _, from_session_server = miner.edit_and_wait(**request)
    fresh = InProcessSidecar(tiny_model_dir, tmp_path / "data").start()
    try:
        _, from_fresh_start = MinerClient(fresh.url).edit_and_wait(**request)
    finally:
        fresh.stop()
    assert _sha(from_fresh_start) == _sha(from_session_server)


@pytest.mark.skipif(bool(EXTERNAL_MINER), reason="checks the self-started tiny-model miner's engine")
def test_health_reports_the_engine_and_its_self_check(miner: MinerClient) -> None:
    health = requests.get(f"{miner.base_url}/health", timeout=10).json()
    engine = health["engine"]
    assert health["services"]["kontext_edit"] == "ready" and engine["state"] == "ready"
    assert engine["device"] == "cpu" and engine["recipe"] == "kontext-v1" and engine["profile"] == "float32/attn=native"
    assert engine["self_check"]["status"] in ("recorded", "match") and len(engine["self_check"]["actual"]) == 64
