"""Proof under load: a burst past MAX_QUEUE gets 503 + Retry-After, and every accepted job is answered. (The miner
runs in this process, served on loopback: the burst needs no process of its own.)"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import requests

from tests.e2e.kontext_determinism.conftest import EXTERNAL_MINER, MinerClient, image_b64
from tests.e2e.servers import InProcessSidecar

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(EXTERNAL_MINER), reason="starts its own miner")]

BURST = 30
MAX_QUEUE = 2


def test_burst_past_the_queue_bound(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = InProcessSidecar(tiny_model_dir, tmp_path / "data", max_queue=MAX_QUEUE).start()
    client = MinerClient(server.url)
    picture = image_b64()
    try:
        def post(seed: int) -> requests.Response:
            return client.post(prompt="burst", image_b64=picture, seed=seed, width=64, height=64,
                               num_inference_steps=2)

        with ThreadPoolExecutor(max_workers=BURST) as pool:
            responses = list(pool.map(post, range(BURST)))
        burst_ended = time.time()
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}, codes
        refused = [r for r in responses if r.status_code == 503]
        accepted = [r.json()["job_id"] for r in responses if r.status_code == 200]
        assert refused and all(r.headers.get("Retry-After") and r.json()["error"] == "queue_full" for r in refused)
        statuses = [client.wait(job_id) for job_id in accepted]
        assert [s["status"] for s in statuses] == ["completed"] * len(accepted)
        # at most MAX_QUEUE waiting, plus those the worker took off the queue during the burst: each one it
        # started then, and the one it may have taken and not yet marked started
        taken = sum(datetime.fromisoformat(s["started_at"]).timestamp() <= burst_ended for s in statuses)
        assert MAX_QUEUE <= len(accepted) <= MAX_QUEUE + taken + 1, (len(accepted), taken)
        health = requests.get(f"{server.url}/health", timeout=10).json()
        assert health["queue"]["depth"] == 0 and health["jobs"]["completed"] == len(accepted)
        # after the burst the miner takes work again
        assert post(999).status_code == 200
    finally:
        server.stop()
