"""The real neuron, offline on loopback: signed synapses in, the same bytes as the sidecar out, and the same bytes as
another miner of its recipe (`kontext-client conformance --against URL`). One neuron for the module; the last test
stops it with SIGTERM (pm2 stop), so it stays last."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests
from bittensor.sp_core import Keypair
from PIL import Image

from kontext.client.cli import main
from kontext.client.signing import btauth_headers, epistula_headers
from tests.e2e.kontext_determinism.conftest import MinerClient, image_b64
from tests.e2e.servers import InProcessSidecar, NeuronProcess, stored_job
from tests.waiting import poll

pytestmark = pytest.mark.e2e

VALIDATOR = Keypair.create_from_uri("//E2eValidator")
NO_PERMIT = Keypair.create_from_uri("//E2eNoPermit")
STRANGER = Keypair.create_from_uri("//E2eStranger")
EDIT = {"prompt": "Add a red hat", "image_b64": image_b64(), "seed": 77, "width": 64, "height": 64,
        "num_inference_steps": 2}


@dataclass
class Servers:
    neuron: NeuronProcess
    miner_hotkey: str
    others: dict[str, InProcessSidecar]
    """Two more miners for ``kontext-client conformance --against``, in this process: "b" runs kontext-v1 as the
    neuron does, "reference" runs reference-v1."""


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The module's neuron and the two miners beside it, started together (their engines load while the neuron's
    process imports its libraries)."""
    import bittensor as bt

    home = tmp_path_factory.mktemp("home")
    wallets = home / "wallets"
    wallet = bt.Wallet("miner", "default", path=str(wallets)).create_new_hotkey(use_password=False, suppress=True)
    miner_hotkey = wallet.hotkey.ss58_address
    cli_validator = bt.Wallet("vali", "default", path=str(wallets)).create_new_hotkey(use_password=False, suppress=True)
    validators = (f"{VALIDATOR.ss58_address}:5000,{NO_PERMIT.ss58_address}:10:nopermit,"
                  f"{cli_validator.hotkey.ss58_address}:100")
    process = NeuronProcess(tiny_model_dir, home / "data", wallet_path=wallets, validators=validators)
    others = {name: InProcessSidecar(tiny_model_dir, tmp_path_factory.mktemp(name) / "data", kontext_recipe=recipe,
                                     kontext_self_check=False)
              for name, recipe in (("b", "kontext-v1"), ("reference", "reference-v1"))}
    try:
        process.start(wait_ready=False)
        for server in others.values():
            server.start(wait_ready=False)
        process.wait_ready()
        for server in others.values():
            server.wait_ready()
        yield Servers(process, miner_hotkey, others)
    finally:
        process.stop()
        for server in others.values():
            server.stop()


@pytest.fixture(scope="module")
def neuron(servers: Servers) -> tuple[NeuronProcess, str]:
    return servers.neuron, servers.miner_hotkey


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

    def finished() -> bool:
        answer = _signed(neuron, receiver, "StatusSynapse", {"job_id": job_id}, scheme=scheme)
        assert answer.status_code == 200, answer.text
        status.update(answer.json()["status"])
        return status["status"] in ("completed", "failed")

    poll(finished, 120, f"{job_id} finished")
    return status


@pytest.fixture(scope="module")
def sidecar_png(neuron) -> bytes:
    """``EDIT`` through the plain sidecar, once: what each signed scheme's result must equal."""
    return MinerClient(neuron[0].url).edit_and_wait(**EDIT)[1]


@pytest.mark.parametrize("scheme", ["btauth", "epistula"])
def test_signed_edit_matches_the_sidecar_byte_for_byte(neuron, sidecar_png: bytes, scheme: str) -> None:
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


# -- `kontext-client conformance --against URL`: the same case on two miners, compared byte for byte ----------


@pytest.fixture(scope="module")
def miners(servers: Servers) -> dict[str, str]:
    """name -> base URL: "a" is the module's neuron (its sidecar, kontext-v1), "b" and "reference" run beside it."""
    return {"a": servers.neuron.url, **{name: server.url for name, server in servers.others.items()}}


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    """One small case whose input is a file beside the case file (sent inline to both miners)."""
    buffer = io.BytesIO()
    Image.new("RGB", (80, 48), (30, 160, 90)).save(buffer, format="PNG")
    (tmp_path / "in.png").write_bytes(buffer.getvalue())
    case = {"name": "small", "image_file": "in.png", "request": {
        "prompt": "Add a red hat", "seed": 11, "width": 64, "height": 64, "num_inference_steps": 2,
        "guidance_scale": 4.0, "image_url": "https://validator.example/in.png"}}
    (tmp_path / "cases.jsonl").write_text(json.dumps(case) + "\n")
    return tmp_path / "cases.jsonl"


def test_conformance_the_same_recipe_gives_the_same_bytes(capsys, miners: dict[str, str], cases: Path) -> None:
    main(["--url", miners["a"], "conformance", str(cases), "--against", miners["b"]])
    first, last = capsys.readouterr().out.splitlines()
    verdict, hashes = first.split(": ", 1)
    assert verdict == "EQUAL     small"
    this, other = (part.split("=", 1)[1] for part in hashes.split())
    assert this == other and len(this) == 64
    assert last == f"1/1 case(s) give the same PNG bytes on {miners['a']} (this) and {miners['b']} (other)"


def test_conformance_another_recipe_is_reported_with_both_hashes_and_exit_1(capsys, miners: dict[str, str],
                                                                           cases: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--url", miners["a"], "conformance", str(cases), "--against", miners["reference"]])
    assert exited.value.code == 1
    first, last = capsys.readouterr().out.splitlines()
    assert first.startswith("DIFFERENT small: this=") and last.startswith("0/1 case(s) give the same PNG bytes")
    this, other = (part.split("=", 1)[1] for part in first.split(": ", 1)[1].split())
    assert this != other and len(this) == len(other) == 64


def test_sigterm_drains_with_503s_and_exits_0(neuron) -> None:
    """pm2 stop: new jobs get 503 on both doors while the running one finishes; status stays open; exit 0. Stops
    the module's neuron: the last test of the module."""
    import signal

    process, hotkey = neuron
    long_edit = {**EDIT, "width": 768, "height": 768, "num_inference_steps": 4, "seed": 91}
    job_id = MinerClient(process.url).edit(**long_edit)["job_id"]

    def taken() -> bool:
        return MinerClient(process.url).status(job_id)["status"] != "queued"

    poll(taken, 60, f"{job_id} taken by the worker")
    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    refused: dict[str, requests.Response] = {}

    def both_refuse() -> bool:
        for door, answer in (("sidecar", lambda: requests.post(f"{process.url}/edit", json=EDIT, timeout=10)),
                             ("door", lambda: _signed(process, hotkey, "EditSynapse", EDIT))):
            if door not in refused and (response := answer()).status_code == 503:
                refused[door] = response
        return len(refused) == 2

    poll(both_refuse, 60, "503 on both doors")
    assert refused["sidecar"].json()["error"] == "service_unavailable"
    assert "shutting down" in refused["door"].json()["message"]
    assert "Retry-After" in refused["sidecar"].headers
    assert MinerClient(process.url).status(job_id)["status"] in ("processing", "completed")  # still answered
    assert process.proc.wait(90) == 0
    job = stored_job(process.data_dir, job_id)  # what the next start finds
    assert job.status.value == "completed" and job.attempts == 1  # finished before the exit
