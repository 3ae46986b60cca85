"""The public door's routes, in-process: /, /check, signed /capacity, /sync/edit, priority, timing rules."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
from aiohttp.test_utils import TestClient
from bittensor.sp_core import Keypair

from kontext.client.signing import btauth_headers, epistula_headers
from kontext.http.app import Door, create_app
from kontext.http.gate import Gate
from kontext.runtime import Runtime
from kontext.settings import Settings
from neurons.auth import SignatureGate
from neurons.registry import Blacklist, Member, ValidatorRegistry
from neurons.synapses import routes as synapse_routes
from tests.fakes import FAIL_PROMPT, FakeEngine, RecordingDeliverer, png_bytes
from tests.unit.test_sidecar import make_settings
from tests.waiting import until, workers_running

MINER = Keypair.create_from_uri("//DoorMiner")
VALIDATOR = Keypair.create_from_uri("//DoorValidator")
RICH = Keypair.create_from_uri("//DoorRichValidator")
IMAGE_B64 = base64.b64encode(png_bytes()).decode()
EDIT = {"prompt": "add a hat", "seed": 7, "image_b64": IMAGE_B64, "num_inference_steps": 2}


def signed_gate() -> SignatureGate:
    members = {VALIDATOR.ss58_address: Member(VALIDATOR.ss58_address, 10.0, True),
               RICH.ss58_address: Member(RICH.ss58_address, 9000.0, True)}
    return SignatureGate(MINER.ss58_address, ValidatorRegistry(Blacklist(), members))


@pytest.fixture
async def door(aiohttp_client):
    """door(settings, engine=None, gate=None, deliverer=None) -> (client, runtime)."""

    async def _door(settings: Settings, engine: Optional[FakeEngine] = None, gate: Optional[Gate] = None,
                    deliverer: Optional[RecordingDeliverer] = None) -> tuple[TestClient, Runtime]:
        runtime = Runtime(settings, engine=engine or FakeEngine(), sender=deliverer)
        app = create_app(runtime, gate=gate, door=Door("door", MINER.ss58_address), extra_routes=synapse_routes,
                         manage_runtime=True)
        return await aiohttp_client(app), runtime

    return _door


async def wait_ready(client: TestClient) -> None:
    async def ready() -> bool:
        return (await (await client.get("/")).json())["engine"] == "ready"

    await until(ready, what="the engine ready")


async def test_root_and_check(door, tmp_path: Path) -> None:
    client, _ = await door(make_settings(tmp_path))
    root = await client.get("/")
    body = await root.json()
    assert root.status == 200 and body["service"] == "kontext-miner" and body["hotkey"] == MINER.ss58_address
    assert body["engine"] in ("unloaded", "loading", "ready") and "POST /sync/edit" in body["endpoints"]
    assert (await client.get(f"/check/{MINER.ss58_address}")).status == 200
    other = await client.get(f"/check/{VALIDATOR.ss58_address}")
    assert other.status == 404 and (await other.json())["error"] == "not_found"


async def test_a_door_without_a_hotkey_checks_none(aiohttp_client, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    client = await aiohttp_client(create_app(Runtime(settings, engine=FakeEngine()), manage_runtime=True))
    assert (await client.get(f"/check/{MINER.ss58_address}")).status == 404
    assert (await (await client.get("/")).json())["hotkey"] is None


async def test_capacity_is_claimed_only_while_the_engine_is_ready(door, tmp_path: Path) -> None:
    loading = threading.Event()

    class SlowLoad(FakeEngine):
        def load(self) -> None:
            loading.wait(10)
            super().load()

    client, _ = await door(make_settings(tmp_path), engine=SlowLoad())
    before = await (await client.get("/capacity")).json()
    assert before == {"img-h100_pcie": False, "base-h100_pcie": False}
    loading.set()
    await wait_ready(client)
    assert await (await client.get("/capacity")).json() == {"img-h100_pcie": True, "base-h100_pcie": False}


async def test_capacity_job_types_come_from_the_setting(door, tmp_path: Path) -> None:
    client, _ = await door(make_settings(tmp_path, capacity_job_types="img-h100_pcie,img-h200"))
    await wait_ready(client)
    answer = await (await client.get("/capacity")).json()
    assert answer == {"img-h100_pcie": True, "base-h100_pcie": False, "img-h200": True}
    assert all(isinstance(value, bool) for value in answer.values())  # the validator discards anything else


async def test_a_failed_engine_claims_nothing(door, tmp_path: Path) -> None:
    client, _ = await door(make_settings(tmp_path), engine=FakeEngine(fail_load="no weights"))
    async def failed() -> bool:
        return (await (await client.get("/")).json())["engine"] == "failed"

    await until(failed, what="the engine failed")
    assert await (await client.get("/capacity")).json() == {"img-h100_pcie": False, "base-h100_pcie": False}


async def test_signed_capacity_get_carries_the_body_the_validator_signs(door, tmp_path: Path) -> None:
    """The validator's signed GET sends the two bytes ``{}`` and signs their SHA256."""
    client, _ = await door(make_settings(tmp_path), gate=signed_gate())
    body = b"{}"
    ok = await client.get("/capacity", data=body,
                          headers=epistula_headers(VALIDATOR, body=body, receiver=MINER.ss58_address))
    assert ok.status == 200 and set(await ok.json()) == {"img-h100_pcie", "base-h100_pcie"}
    signed_empty = await client.get("/capacity", data=body,
                                    headers=epistula_headers(VALIDATOR, body=b"", receiver=MINER.ss58_address))
    assert signed_empty.status == 401 and (await signed_empty.json())["error"] == "unauthorized"
    unsigned = await client.get("/capacity")
    assert unsigned.status == 401 and "not signed" in (await unsigned.json())["message"]
    btauth = await client.get("/capacity", data=body, headers=btauth_headers(
        VALIDATOR, method="GET", path="/capacity", body=body, receiver=MINER.ss58_address))
    assert btauth.status == 200
    stranger = Keypair.create_from_uri("//DoorStranger")
    refused = await client.get("/capacity", data=body,
                               headers=epistula_headers(stranger, body=body, receiver=MINER.ss58_address))
    assert refused.status == 403 and (await refused.json())["error"] == "forbidden"


async def test_signed_edit_carries_the_callers_stake_as_priority(door, tmp_path: Path) -> None:
    """Every signed door passes the validator's stake to the queue (the signed sidecar used to drop it)."""
    gate = threading.Event()
    client, runtime = await door(make_settings(tmp_path), engine=FakeEngine(gate=gate), gate=signed_gate())
    jobs = {}
    for name, key in (("blocker", VALIDATOR), ("ahead", VALIDATOR), ("low", VALIDATOR), ("high", RICH)):
        raw = json.dumps({**EDIT, "job_id": f"job-{name}"}).encode()
        response = await client.post("/edit", data=raw,
                                     headers=epistula_headers(key, body=raw, receiver=MINER.ss58_address))
        assert response.status == 200, await response.text()
        jobs[name] = (await response.json())["job_id"]
        if name == "blocker":  # running (not waiting) before the others come
            await until(workers_running(runtime, 1), what="the blocker running")
        if name == "ahead":  # taken ahead by the worker's second slot: the queue holds what comes after

            async def taken() -> bool:
                return runtime.workers is not None and jobs["ahead"] in runtime.workers.waiting_for_device()

            await until(taken, what="the next job taken ahead")
    assert (await runtime.store.get(jobs["high"])).priority == 9000.0  # type: ignore[union-attr]
    assert (await runtime.store.get(jobs["low"])).priority == 10.0  # type: ignore[union-attr]
    # the richer validator's job overtakes the earlier, poorer one in the queue
    assert await runtime.queue.position(jobs["high"]) == 1 and await runtime.queue.position(jobs["low"]) == 2
    gate.set()


async def test_sync_edit_answers_the_png_with_its_headers(door, tmp_path: Path) -> None:
    deliverer = RecordingDeliverer()
    client, _ = await door(make_settings(tmp_path), deliverer=deliverer)
    response = await client.post("/sync/edit", json={**EDIT, "callback_url": "http://receiver.test/cb"})
    assert response.status == 200 and response.content_type == "image/png"
    png = await response.read()
    job_id = response.headers["X-Job-ID"]
    assert response.headers["X-Status"] == "completed" and response.headers["X-Seed"] == "7"
    assert response.headers["X-Image-SHA256"] == hashlib.sha256(png).hexdigest()
    assert await (await client.get(f"/edit/result/{job_id}")).read() == png
    await until(deliverer.has_sent, what="the callback sent")  # the job also sends its callback
    assert deliverer.sent[0][2].job_id == job_id and deliverer.sent[0][3] == png


async def test_sync_edit_of_a_failed_job_is_a_json_error(door, tmp_path: Path) -> None:
    client, _ = await door(make_settings(tmp_path))
    response = await client.post("/sync/edit", json={**EDIT, "prompt": FAIL_PROMPT, "job_id": "doomed-1"})
    body = await response.json()
    assert response.status == 422 and body["error"] == "job_failed" and body["job_id"] == "doomed-1"
    assert "always fails" in body["message"]


async def test_sync_edit_timeout_is_504_and_the_job_runs_on(door, tmp_path: Path) -> None:
    gate = threading.Event()
    client, _ = await door(make_settings(tmp_path, sync_timeout_seconds=0.3), engine=FakeEngine(gate=gate))
    response = await client.post("/sync/edit", json={**EDIT, "job_id": "slow-1"})
    body = await response.json()
    assert response.status == 504 and body["error"] == "sync_timeout" and body["job_id"] == "slow-1"
    gate.set()
    for _ in range(500):
        status = await (await client.get("/edit/status/slow-1")).json()
        if status["status"] == "completed":
            break
        await asyncio.sleep(0.01)
    assert status["status"] == "completed"
    assert (await client.get("/edit/result/slow-1")).status == 200


async def test_a_client_that_disconnects_does_not_cancel_the_job(door, tmp_path: Path) -> None:
    gate = threading.Event()
    client, _ = await door(make_settings(tmp_path), engine=FakeEngine(gate=gate))
    request = asyncio.ensure_future(client.post("/sync/edit", json={**EDIT, "job_id": "gone-1"}))

    async def accepted() -> bool:
        return (await client.get("/edit/status/gone-1")).status == 200

    await until(accepted, what="gone-1 accepted")
    request.cancel()  # the client goes away mid-wait
    with pytest.raises(asyncio.CancelledError):
        await request
    gate.set()

    async def completed() -> bool:
        return (await (await client.get("/edit/status/gone-1")).json())["status"] == "completed"

    await until(completed, what="gone-1 completed")


async def test_synapses_share_the_parser_and_the_gate(door, tmp_path: Path) -> None:
    client, _ = await door(make_settings(tmp_path), gate=signed_gate())
    raw = json.dumps({**EDIT, "job_id": "syn-1"}).encode()
    headers = btauth_headers(VALIDATOR, path="/EditSynapse", body=raw, receiver=MINER.ss58_address)
    response = await client.post("/EditSynapse", data=raw, headers=headers)
    assert response.status == 200 and (await response.json())["accepted"]["job_id"] == "syn-1"
    unsigned = await client.post("/EditSynapse", data=raw)
    assert unsigned.status == 401


DEEP = b'{"prompt": "p", "seed": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
BIG_INT = b'{"prompt": "p", "seed": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize("body, names", [(DEEP, "nested too deeply"), (BIG_INT, "4300 digits")])
@pytest.mark.parametrize("path", ["/edit", "/sync/edit", "/EditSynapse"])
async def test_hostile_json_is_400_not_500(door, tmp_path: Path, path: str, body: bytes, names: str) -> None:
    client, _ = await door(make_settings(tmp_path, max_request_bytes=1_000_000))
    response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400 and names in (await response.json())["message"]


async def test_callback_waits_for_not_before_while_the_result_is_visible(door, tmp_path: Path) -> None:
    deliverer = RecordingDeliverer()
    client, _ = await door(make_settings(tmp_path, callback_not_before_seconds=1.5), deliverer=deliverer)
    arrived = time.time()
    job_id = (await (await client.post("/edit", json={**EDIT, "callback_url": "http://r.test/cb"})).json())["job_id"]

    async def status() -> dict:
        return await (await client.get(f"/edit/status/{job_id}")).json()

    async def completed() -> bool:
        return (await status())["status"] == "completed"

    await until(completed, what="the job completed")
    # The seed's status shape: no "callback" until its outcome is known; the wait is said apart.
    waiting = await status()
    assert "callback" not in waiting and waiting["callback_pending"]["state"] == "waiting"
    assert (await client.get(f"/edit/result/{job_id}")).status == 200  # visible before the callback
    assert waiting["callback_pending"]["not_before"] is not None and not deliverer.sent
    await until(deliverer.has_sent, what="the callback sent")
    assert time.time() - arrived >= 1.5

    async def recorded() -> bool:  # the outcome is recorded just after the POST returns
        return "callback" in await status()

    await until(recorded, what="the callback's outcome recorded")
    final = await status()
    assert final["callback"]["status"] == "delivered" and "callback_pending" not in final


async def test_admission_deadline_refuses_at_once_with_retry_after(door, tmp_path: Path, caplog) -> None:
    gate = threading.Event()
    client, runtime = await door(make_settings(tmp_path, admission_deadline_seconds=3.0),
                                 engine=FakeEngine(gate=gate))
    from kontext.jobs.record import JobRecord
    from protocol import EditRequest, JobStatus

    learned = JobRecord(id="past", request=EditRequest(prompt="p", seed=1, num_inference_steps=2),
                        status=JobStatus.COMPLETED, started_at=100.0, finished_at=102.0)
    runtime.service.admission.record(learned)  # 2-step edits take about 2 s here (plus the 1 s upload margin)
    first = await client.post("/edit", json=EDIT)
    assert first.status == 200  # nothing ahead: about 2 s, inside the deadline
    await until(workers_running(runtime, 1), what="the first job running")
    second = await client.post("/edit", json={**EDIT, "seed": 8})
    body = await second.json()
    assert second.status == 503 and body["error"] == "deadline_unreachable" and "3s deadline" in body["message"]
    assert int(second.headers["Retry-After"]) >= 1
    refusals = [r for r in caplog.records if "503 deadline_unreachable" in r.getMessage()]
    assert refusals and refusals[0].levelname == "WARNING"  # the operator sees each refusal (it costs a failure)
    gate.set()


def test_settings_refuse_claiming_a_job_type_this_miner_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="base-h100_pcie"):
        make_settings(tmp_path, capacity_job_types="img-h100_pcie,base-h100_pcie")


def test_the_openapi_document_lists_the_gates_refusals_on_every_gated_route() -> None:
    import inspect

    from kontext.http.openapi import openapi_document
    from kontext.http.routes import routes

    gated = {(route.method.lower(), route.path) for route in routes  # type: ignore[attr-defined]
             if "await admit(request)" in inspect.getsource(route.handler)}  # type: ignore[attr-defined]
    assert gated == {("get", "/capacity"), ("post", "/edit"), ("post", "/sync/edit")}
    document = openapi_document()
    for method, path in gated:
        assert {"401", "403"} <= set(document["paths"][path][method]["responses"]), (method, path)
