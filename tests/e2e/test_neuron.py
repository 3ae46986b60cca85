"""The real neuron, offline on loopback: signed synapses in, the same bytes as the sidecar out. One neuron for the
module; the last test stops it with SIGTERM (pm2 stop), so it stays last."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Iterator

import pytest
import requests
from bittensor.sp_core import Keypair

from kontext.client.cli import main
from kontext.client.signing import btauth_headers, epistula_headers
from tests.e2e.kontext_determinism.conftest import MinerClient, image_b64
from tests.e2e.servers import NeuronProcess, stored_job
from tests.waiting import until

pytestmark = pytest.mark.e2e

VALIDATOR = Keypair.create_from_uri("//E2eValidator")
NO_PERMIT = Keypair.create_from_uri("//E2eNoPermit")
STRANGER = Keypair.create_from_uri("//E2eStranger")
EDIT = {"prompt": "Add a red hat", "image_b64": image_b64(), "seed": 77, "width": 64, "height": 64,
        "num_inference_steps": 2}


@pytest.fixture(scope="module")
def neuron(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NeuronProcess, str]]:
    import bittensor as bt

    home = tmp_path_factory.mktemp("home")
    wallets = home / "wallets"
    wallet = bt.Wallet("miner", "default", path=str(wallets)).create_new_hotkey(use_password=False, suppress=True)
    miner_hotkey = wallet.hotkey.ss58_address
    cli_validator = bt.Wallet("vali", "default", path=str(wallets)).create_new_hotkey(use_password=False, suppress=True)
    validators = (f"{VALIDATOR.ss58_address}:5000,{NO_PERMIT.ss58_address}:10:nopermit,"
                  f"{cli_validator.hotkey.ss58_address}:100")
    process = NeuronProcess(tiny_model_dir, home / "data", wallet_path=wallets, validators=validators).start()
    try:
        yield process, miner_hotkey
    finally:
        process.stop()


def _post(neuron: NeuronProcess, synapse: str, body: dict, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{neuron.axon_url}/{synapse}", data=json.dumps(body).encode(), headers=headers, timeout=30)


def _signed(neuron: NeuronProcess, receiver: str, synapse: str, body: dict, *, scheme: str = "btauth",
            key: Keypair = VALIDATOR) -> requests.Response:
    raw = json.dumps(body).encode()
    headers = (btauth_headers(key, path=f"/{synapse}", body=raw, receiver=receiver) if scheme == "btauth"
               else epistula_headers(key, body=raw, receiver=receiver))
    return requests.post(f"{neuron.axon_url}/{synapse}", data=raw, headers=headers, timeout=30)


def _wait(neuron: NeuronProcess, receiver: str, job_id: str, scheme: str) -> dict:
    status: dict = {}

    async def finished() -> bool:
        answer = _signed(neuron, receiver, "StatusSynapse", {"job_id": job_id}, scheme=scheme)
        assert answer.status_code == 200, answer.text
        status.update(answer.json()["status"])
        return status["status"] in ("completed", "failed")

    asyncio.run(until(finished, timeout=120, what=f"{job_id} finished"))
    return status


@pytest.mark.parametrize("scheme", ["btauth", "epistula"])
def test_signed_edit_matches_the_sidecar_byte_for_byte(neuron, scheme: str) -> None:
    process, miner_hotkey = neuron
    accepted = _signed(process, miner_hotkey, "EditSynapse", EDIT, scheme=scheme)
    assert accepted.status_code == 200, accepted.text
    reply = accepted.json()
    assert reply["accepted"]["accepted"] is True and "image_b64" not in reply
    job_id = reply["accepted"]["job_id"]
    assert _wait(process, miner_hotkey, job_id, scheme)["status"] == "completed"
    result = _signed(process, miner_hotkey, "ResultSynapse", {"job_id": job_id}, scheme=scheme).json()
    png = base64.b64decode(result["image_b64"])
    assert hashlib.sha256(png).hexdigest() == result["sha256"]
    assert result["recipe"] == "kontext-v1"  # the recipe is reported wherever a result is

    _, sidecar_png = MinerClient(process.url).edit_and_wait(**EDIT)
    assert sidecar_png == png


def test_unsigned_is_401(neuron) -> None:
    process, _ = neuron
    response = _post(process, "EditSynapse", EDIT, {})
    assert response.status_code == 401 and "not signed" in response.json()["message"]


def test_replay_is_401(neuron) -> None:
    process, miner_hotkey = neuron
    raw = json.dumps({"job_id": "edit-nothing"}).encode()
    headers = btauth_headers(VALIDATOR, path="/StatusSynapse", body=raw, receiver=miner_hotkey)
    first = requests.post(f"{process.axon_url}/StatusSynapse", data=raw, headers=headers, timeout=10)
    assert first.status_code == 404  # authenticated, but no such job
    again = requests.post(f"{process.axon_url}/StatusSynapse", data=raw, headers=headers, timeout=10)
    assert again.status_code == 401 and "Replayed" in again.json()["message"]


def test_unknown_hotkey_and_missing_permit_are_403(neuron) -> None:
    process, miner_hotkey = neuron
    assert _signed(process, miner_hotkey, "EditSynapse", EDIT, key=STRANGER).status_code == 403
    response = _signed(process, miner_hotkey, "EditSynapse", EDIT, key=NO_PERMIT, scheme="epistula")
    assert response.status_code == 403 and "permit" in response.json()["message"]


def test_wrong_receiver_is_401(neuron) -> None:
    process, _ = neuron
    assert _signed(process, STRANGER.ss58_address, "EditSynapse", EDIT).status_code == 401


@pytest.mark.parametrize("synapse, body, status", [
    ("NopeSynapse", {}, 404),  # no such route on the door: the same JSON 404 as any unknown path
    ("EditSynapse", {"prompt": "p"}, 422),
    ("StatusSynapse", {"job_id": "../x"}, 422),
])
def test_bad_synapses_are_4xx_json(neuron, synapse: str, body: dict, status: int) -> None:
    process, miner_hotkey = neuron
    response = _signed(process, miner_hotkey, synapse, body)
    assert response.status_code == status and response.json()["message"]


def test_malformed_and_oversized_bodies(neuron) -> None:
    process, miner_hotkey = neuron
    raw = b"{not json"
    headers = btauth_headers(VALIDATOR, path="/EditSynapse", body=raw, receiver=miner_hotkey)
    response = requests.post(f"{process.axon_url}/EditSynapse", data=raw, headers=headers, timeout=10)
    assert response.status_code == 400 and "JSON" in response.json()["message"]
    huge = requests.post(f"{process.axon_url}/EditSynapse", data=b"x" * (33 * 1024 * 1024), timeout=30)
    assert huge.status_code == 413


def test_health_reports_the_metagraph(neuron) -> None:
    process, miner_hotkey = neuron
    health = requests.get(f"{process.axon_url}/health", timeout=10).json()
    assert health["hotkey"] == miner_hotkey and health["metagraph"]["source"] == "offline"
    assert health["metagraph"]["validators"] == 2 and health["metagraph"]["members"] == 3 and health["services"]["kontext_edit"] == "ready"
    assert _post(process, "StatusSynapse", {"job_id": "edit-x"}, {}).status_code == 401
    metrics = requests.get(f"{process.url}/metrics", timeout=10).text
    assert 'kontext_auth_rejections_total{reason="bad_signature"}' in metrics


def test_client_command_through_sidecar_and_axon(capsys, neuron, tmp_path: Path) -> None:
    """``kontext-client edit`` through the sidecar and, signed with a validator's wallet, through the door; run in
    this process."""
    process, miner_hotkey = neuron
    image = tmp_path / "in.png"
    image.write_bytes(base64.b64decode(EDIT["image_b64"]))
    common = ["edit", str(image), "--prompt", "Add a red hat", "--seed", "77", "--steps", "2", "--width", "64",
              "--height", "64"]
    main(["--url", process.url, *common, "--out", str(tmp_path / "a.png")])
    via_sidecar = capsys.readouterr()
    main(["--axon", process.axon_url, "--miner-hotkey", miner_hotkey, "--wallet.name", "vali", "--wallet.path",
          str(process.wallet_path), *common, "--out", str(tmp_path / "b.png")])
    via_axon = capsys.readouterr()
    first, second = json.loads(via_sidecar.out), json.loads(via_axon.out)
    assert first["sha256"] == second["sha256"] == hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()
    assert "step" in via_sidecar.err or "completed" in via_sidecar.err


def test_sigterm_drains_with_503s_and_exits_0(neuron) -> None:
    """pm2 stop: new jobs get 503 on both doors while the running one finishes; status stays open; exit 0. Stops
    the module's neuron: the last test of the module."""
    import signal

    process, hotkey = neuron
    long_edit = {**EDIT, "width": 768, "height": 768, "num_inference_steps": 4, "seed": 91}
    job_id = MinerClient(process.url).edit(**long_edit)["job_id"]

    async def taken() -> bool:
        return MinerClient(process.url).status(job_id)["status"] != "queued"

    asyncio.run(until(taken, timeout=60, what=f"{job_id} taken by the worker"))
    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    refused: dict[str, requests.Response] = {}

    async def both_refuse() -> bool:
        for door, answer in (("sidecar", lambda: requests.post(f"{process.url}/edit", json=EDIT, timeout=10)),
                             ("door", lambda: _signed(process, hotkey, "EditSynapse", EDIT))):
            if door not in refused and (response := answer()).status_code == 503:
                refused[door] = response
        return len(refused) == 2

    asyncio.run(until(both_refuse, timeout=60, what="503 on both doors"))
    assert refused["sidecar"].json()["error"] == "service_unavailable"
    assert "shutting down" in refused["door"].json()["message"]
    assert "Retry-After" in refused["sidecar"].headers
    assert MinerClient(process.url).status(job_id)["status"] in ("processing", "completed")  # still answered
    assert process.proc.wait(90) == 0
    job = stored_job(process.data_dir, job_id)  # what the next start finds
    assert job.status.value == "completed" and job.attempts == 1  # finished before the exit
