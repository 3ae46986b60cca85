"""Act as the subnet's validator against the real neuron over HTTPS (find it, check it, send it work, audit it), and
run `kontext-client preflight` against the same neuron: it passes signed with the miner's own wallet and fails against
another hotkey, a certificate it cannot verify or one for another name. One neuron, started as the README says."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests
from bittensor.sp_core import Keypair
from PIL import Image

from kontext.client.cli import main
from kontext.jobs.admission import fit
from protocol.limits import NUM_INFERENCE_STEPS_MAX
from tests.e2e.conftest import VALIDATOR, Subnet
from tests.e2e.kontext_determinism.conftest import MinerClient
from tests.e2e.servers import CallbackReceiver, ReceivedCallback
from tests.e2e.validator import ImageHost, Validator, edit_payload, uuid7
from tests.waiting import poll

pytestmark = pytest.mark.e2e


@pytest.fixture
def subnet(readme_neuron: Subnet) -> Subnet:
    return readme_neuron


def _dispatch(subnet: Subnet, seed: int, *, steps: int = 1) -> tuple[dict, float]:
    """The validator's payload (one denoising step: the cheapest edit, as the bytes it gives matter here, not how
    good they are), its callback expected with its own secret."""
    payload = edit_payload(image_url=subnet.images.url("person.png"), callback_url=subnet.callbacks.url, seed=seed,
                           steps=steps)
    subnet.callbacks.expect(payload["job_id"], payload["callback_secret"])
    return payload, time.time()


@dataclass
class Sent:
    """A job as the validator sent it: its payload, when, the answer, and its status right after."""

    payload: dict
    dispatched_at: float
    answer: requests.Response
    status_at_once: dict


def _send(subnet: Subnet, payload: dict, dispatched_at: float) -> Sent:
    answer = subnet.validator.signed_post("/edit", payload)
    status = subnet.validator.get(f"/edit/status/{payload['job_id']}")
    return Sent(payload, dispatched_at, answer, status.json() if status.status_code == 200 else {})


@dataclass
class PreflightRun:
    result: tuple[int, dict[str, str]]
    inputs_served: int
    callbacks: list[ReceivedCallback]


@pytest.fixture(scope="module")
def preflight_run(readme_neuron: Subnet) -> Iterator[PreflightRun]:
    """``kontext-client preflight`` as the validator sends it (input at a public https URL, a callback receiver),
    alone on the neuron: its timing checks and its /sync/edit find no queue of the test's making. Its edits also
    tell the neuron how long an edit takes (``wave`` sizes its burst from that)."""
    subnet = readme_neuron
    images = ImageHost(subnet.server_ssl, {"in.png": _png()})
    receiver = CallbackReceiver().start()
    try:
        result = _preflight(subnet, "--subtensor.network", "offline", after=(
            "--image-url", images.url("in.png"), "--callback-url", f"http://127.0.0.1:{receiver.port}/cb"))
        yield PreflightRun(result, images.requests, list(receiver.received))
    finally:
        images.stop()
        receiver.stop()


@dataclass
class Wave:
    edit: Sent
    wrong_secret: Sent
    synced_payload: dict
    synced: requests.Response
    burst: list[tuple[dict, requests.Response]]


@pytest.fixture(scope="module")
def wave(readme_neuron: Subnet, preflight_run: PreflightRun) -> Iterator[Wave]:
    """The jobs of the tests that wait for callbacks, sent at once: the validator's callbacks come no earlier than
    8 s after dispatch, so one after another each such test costs 8 s. Once the neuron is idle (the tests before
    are done, and it knows an edit time): an edit, one whose callback the receiver expects with another secret, the
    edit again through ``/sync/edit``, and behind those three a burst it cannot finish within the deadline (sized
    from its /health), so that their edits and callback waits overlap the burst's."""
    subnet = readme_neuron
    health = _idle_health(subnet)
    payload, at = _dispatch(subnet, seed=4242)
    edit = _send(subnet, payload, at)
    payload, at = _dispatch(subnet, seed=5)
    subnet.callbacks.expect(payload["job_id"], "someone-elses-secret")
    wrong_secret = _send(subnet, payload, at)
    again, _ = _dispatch(subnet, seed=4242)
    synced: dict[str, object] = {}

    def sync_edit() -> None:
        try:
            synced["answer"] = subnet.validator.signed_post("/sync/edit", again)
        except BaseException as exc:  # re-raised in the fixture's thread
            synced["error"] = exc

    sync = threading.Thread(target=sync_edit, name="sync-edit")
    sync.start()
    try:
        def in_line() -> bool:  # the /sync/edit is queued (or answered): the burst goes behind it
            return bool(synced) or subnet.validator.get(f"/edit/status/{again['job_id']}").status_code == 200

        poll(in_line, 60, "the /sync/edit in the queue")
        ahead = [job.payload["num_inference_steps"] for job in (edit, wrong_secret)] + [again["num_inference_steps"]]
        steps, jobs = _burst_shape(health, ahead_steps=ahead)
        burst = [_dispatch(subnet, seed=100 + index, steps=steps)[0] for index in range(jobs)]
        answers = [subnet.validator.signed_post("/edit", job) for job in burst]
        sync.join(120)
        if "error" in synced:
            raise synced["error"]  # type: ignore[misc]
        yield Wave(edit, wrong_secret, again, synced["answer"], list(zip(burst, answers)))  # type: ignore[arg-type]
    finally:
        sync.join(120)


def _idle_health(subnet: Subnet) -> dict:
    """/health once no job is queued, downloading or running."""
    health: dict = {}

    def idle() -> bool:
        health.update(subnet.validator.get("/health").json())
        jobs = health["jobs"]
        return not jobs.get("queued") and not jobs.get("processing") and not health["queue"]["downloading"]

    poll(idle, 120, "the neuron idle")
    return health


def _burst_shape(health: dict, ahead_steps: list[int]) -> tuple[int, int]:
    """(steps, jobs) of a burst the neuron cannot finish in time behind jobs of ``ahead_steps``, from its /health: its
    recent edits (fitted as its admission fits them), its deadline, margin and engines taking jobs. Each job is sized
    to a little over half of what the deadline leaves after the jobs ahead, so that one fits and the next does not
    (the accepted work stays short; should the jobs ahead have moved on, two fit); there are enough jobs that the
    last is refused even with nothing ahead."""
    workers = [worker for worker in health["engine"]["workers"] if worker["taking_jobs"]]
    model = fit([tuple(edit) for worker in workers for edit in worker["recent_edits"]])
    assert workers and model is not None, health  # the edits before taught it an edit time
    profile = health["profile"]
    budget = profile["admission_deadline_seconds"] - profile["admission_margin_seconds"]
    room = budget - sum(model.seconds(steps) for steps in ahead_steps) / len(workers)
    wanted = 0.53 * room - model.fixed
    steps = 2 if model.per_step <= 0 else min(NUM_INFERENCE_STEPS_MAX, max(1, math.ceil(wanted / model.per_step)))
    return steps, int(budget * len(workers) / model.seconds(steps)) + 2


def _once_the_callback_is_recorded(subnet: Subnet, job_id: str) -> dict:
    """The job's status once the miner has recorded its callback's outcome: the receiver knows it first (it
    answers the POST), the miner only after reading that answer."""
    return MinerClient(subnet.validator.base_url, verify=subnet.validator.verify).wait_callback(job_id)


def _preflight(subnet: Subnet, *flags: str, axon: str = "", hotkey: str = "", cacert: bool = True,
               after: tuple[str, ...] = ()) -> tuple[int, dict[str, str]]:
    """Run the command in this process: (exit code, check name -> "VERDICT what was seen")."""
    argv = ["--axon", axon or subnet.neuron.axon_url, "--miner-hotkey", hotkey or subnet.miner_hotkey,
            *subnet.wallet_flags, *(["--cacert", str(subnet.ca_file)] if cacert else []), *flags, "preflight", *after]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    lines = [line for line in out.getvalue().splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    checks = {}
    for line in lines:
        verdict, rest = line.split(" ", 1)
        name, seen = rest.split(": ", 1)
        checks[name] = f"{verdict} {seen}"
    assert list(checks) == ["TLS", "GET /", "GET /check/{hotkey}", "signed GET /capacity", "signed POST /edit",
                            *[n for n in checks if n.startswith(("timing", "callback"))], "POST /sync/edit",
                            "unsigned POST /edit", "chain commitment"], lines  # the validator's order, every check
    return code, checks


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_checks_answer_as_the_validator_expects(subnet: Subnet) -> None:
    root = subnet.validator.get("/")  # over HTTPS, certificate verified, no signature
    assert root.status_code == 200 and root.json()["hotkey"] == subnet.miner_hotkey
    assert subnet.validator.get(f"/check/{subnet.miner_hotkey}").status_code == 200
    assert subnet.validator.get(f"/check/{VALIDATOR.ss58_address}").status_code == 404
    capacity = subnet.validator.signed_get("/capacity")
    assert capacity.status_code == 200, capacity.text
    assert capacity.json() == {"img-h100_pcie": True, "base-h100_pcie": False}
    assert subnet.validator.get("/capacity").status_code == 401  # unsigned


def test_unsigned_and_unknown_callers_are_refused(subnet: Subnet) -> None:
    payload, _ = _dispatch(subnet, seed=6)
    stranger = Validator(Keypair.create_from_uri("//NotAValidator"), subnet.miner_hotkey,
                         subnet.validator.base_url, subnet.validator.verify)
    refused = stranger.signed_post("/edit", payload)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    unsigned = requests.post(subnet.validator.base_url + "/edit", json=payload, timeout=10,
                             verify=subnet.validator.verify)
    assert unsigned.status_code == 401 and unsigned.json()["error"] == "unauthorized"


def test_the_readme_neuron_runs_the_subnet_profile_with_no_job_route_open_to_the_network(subnet: Subnet) -> None:
    health = subnet.validator.get("/health").json()
    assert health["profile"] == {"name": "subnet", "callback_not_before_seconds": 8.0,
                                 "admission_deadline_seconds": 15.0, "admission_margin_seconds": 1.0}
    for address in _non_loopback_addresses():  # the sidecar (unsigned job routes) listens on loopback only
        with pytest.raises(OSError):
            socket.create_connection((address, subnet.neuron.port), timeout=2).close()
    log = subnet.neuron.log_tail(200)
    assert "job routes signed" in log and f"sidecar http://127.0.0.1:{subnet.neuron.port}: job routes unsigned" in log


# -- kontext-client preflight against the same neuron (the operator's view of what the validator does) ------


def test_preflight_passes_signed_with_the_miners_own_wallet(preflight_run: PreflightRun) -> None:
    """As the validator sends it: the input at a public https URL, a callback receiver (``preflight_run``)."""
    code, checks = preflight_run.result
    assert code == 0, {name: line for name, line in checks.items() if not line.startswith(("PASS", "SKIP"))}
    for name in ("TLS", "GET /", "GET /check/{hotkey}", "signed GET /capacity", "signed POST /edit",
                 "timing (done by 15 s)", "timing (callback not before 8 s)", "callback", "POST /sync/edit",
                 "unsigned POST /edit"):
        assert checks[name].startswith("PASS"), checks[name]
    assert '"img-h100_pcie": true' in checks["signed GET /capacity"]
    assert "input from --image-url" in checks["signed POST /edit"] and preflight_run.inputs_served >= 1
    assert checks["callback"].startswith("PASS delivered (HTTP 200)")
    job_id = checks["signed POST /edit"].split("job ", 1)[1].split(";", 1)[0]
    received = [callback.fields.get("job_id") for callback in preflight_run.callbacks]
    assert job_id in received  # what the status said
    assert checks["unsigned POST /edit"].startswith("PASS refused: 401")
    assert checks["chain commitment"] == "SKIP --subtensor.network offline: no chain to read the commitment from"


def test_preflight_fails_against_a_miner_with_another_hotkey(subnet: Subnet) -> None:
    code, checks = _preflight(subnet, hotkey=subnet.other_hotkey)
    assert code == 1
    assert checks["GET /check/{hotkey}"].startswith(f"FAIL 404 for {subnet.other_hotkey}")
    for name in ("signed GET /capacity", "signed POST /edit"):  # signed for another receiver: refused
        assert checks[name].startswith("FAIL 401: Epistula: request was signed for a different receiving hotkey")
        assert f"give --miner-hotkey the hotkey it serves ({subnet.miner_hotkey})" in checks[name]
    assert "(input: image_b64 of a generated 512x512 image (no --image-url" in checks["signed POST /edit"]
    assert checks["POST /sync/edit"].startswith("SKIP")


def test_preflight_fails_on_a_certificate_it_cannot_verify_or_for_another_name(subnet: Subnet) -> None:
    code, checks = _preflight(subnet, cacert=False)
    assert code == 1 and "does not verify: unable to get local issuer certificate" in checks["TLS"]
    assert checks["GET /"] == "SKIP not tried: TLS failed (above)"
    code, checks = _preflight(subnet, axon=subnet.neuron.axon_url.replace("127.0.0.1", "localhost"))
    assert code == 1 and "Hostname mismatch" in checks["TLS"] and "names localhost" in checks["TLS"]


def test_conformance_on_the_signed_door_against_its_own_sidecar(capsys, subnet: Subnet, tmp_path: Path) -> None:
    """--axon: the cases go through the validator's signed POST /edit; equal bytes with the plain sidecar."""
    (tmp_path / "in.png").write_bytes(_png())
    case = {"name": "small", "image_file": "in.png",
            "request": {"prompt": "Add a red hat", "seed": 5, "num_inference_steps": 1, "guidance_scale": 4.0}}
    (tmp_path / "cases.jsonl").write_text(json.dumps(case) + "\n")
    main(["--axon", subnet.neuron.axon_url, "--miner-hotkey", subnet.miner_hotkey, *subnet.wallet_flags,
          "--cacert", str(subnet.ca_file), "conformance", str(tmp_path / "cases.jsonl"), "--against", subnet.neuron.url])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("EQUAL     small: this=") and lines[-1].startswith("1/1 case(s) give the same")


# -- the tests that wait for callbacks (``wave``) -------------------------------------------------------------


def test_an_edit_is_answered_at_once_and_called_back_with_the_audited_png(subnet: Subnet, wave: Wave) -> None:
    payload, accepted = wave.edit.payload, wave.edit.answer
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["job_id"] == payload["job_id"] and accepted.json()["status"] == "queued"
    outcome = subnet.callbacks.wait(payload["job_id"])
    assert outcome.accepted, outcome.reason
    assert outcome.status == "completed"
    result = subnet.validator.get(f"/edit/result/{payload['job_id']}")
    assert result.status_code == 200 and hashlib.sha256(result.content).hexdigest() == outcome.image_sha256
    status = _once_the_callback_is_recorded(subnet, payload["job_id"])
    assert status["callback"]["status"] == "delivered" and status["callback"]["status_code"] == 200
    assert status["request"]["image_source"] == "url"
    assert status["recipe"] == "reference-v1" and status["ignored_fields"] == ["width", "height"]
    assert (status["result_width"], status["result_height"]) == (1024, 1024)
    assert result.headers["X-Recipe"] == "reference-v1"

    again, synced = wave.synced_payload, wave.synced  # the same request again, with another job id
    assert synced.status_code == 200, synced.text
    assert synced.headers["X-Job-ID"] == again["job_id"] and synced.headers["X-Status"] == "completed"
    assert synced.headers["X-Seed"] == "4242"
    assert hashlib.sha256(synced.content).hexdigest() == outcome.image_sha256 == synced.headers["X-Image-SHA256"]
    assert subnet.callbacks.wait(again["job_id"]).image_sha256 == outcome.image_sha256  # it calls back too


def test_callbacks_come_no_earlier_than_8_s_and_image_url_is_the_public_door(subnet: Subnet, wave: Wave) -> None:
    """On the edit of the test above (``wave``): its status as soon as it was accepted, and its callback."""
    payload, dispatched_at = wave.edit.payload, wave.edit.dispatched_at
    assert wave.edit.answer.status_code == 200, wave.edit.answer.text
    waiting = wave.edit.status_at_once
    assert "callback" not in waiting and waiting["callback_pending"]["not_before"]
    outcome = subnet.callbacks.wait(payload["job_id"])
    assert outcome.accepted, outcome.reason
    assert outcome.received_at - dispatched_at >= 8.0  # the validator fails earlier callbacks
    assert outcome.image_url == f"https://127.0.0.1:{subnet.neuron.axon_port}/images/edits/{payload['job_id']}.png"
    status = _once_the_callback_is_recorded(subnet, payload["job_id"])
    assert status["callback"]["status"] == "delivered" and "callback_pending" not in status
    assert status["image_url"] == outcome.image_url
    image = requests.get(outcome.image_url, timeout=10, verify=subnet.validator.verify)  # unsigned, over TLS
    assert image.status_code == 200 and hashlib.sha256(image.content).hexdigest() == outcome.image_sha256


def test_a_wrong_secret_is_what_the_validator_would_refuse(subnet: Subnet, wave: Wave) -> None:
    """The receiver double is strict: a callback carrying another secret fails, as on the validator."""
    payload = wave.wrong_secret.payload
    assert wave.wrong_secret.answer.status_code == 200, wave.wrong_secret.answer.text
    outcome = subnet.callbacks.wait(payload["job_id"])
    assert not outcome.accepted and outcome.reason == "secret missing or different"
    status = _once_the_callback_is_recorded(subnet, payload["job_id"])
    assert status["callback"]["status"] == "failed" and status["callback"]["status_code"] == 400


def test_a_burst_it_cannot_finish_within_15_s_is_refused_at_once_naming_the_deadline(subnet: Subnet,
                                                                                   wave: Wave) -> None:
    """Once an edit time is known, the jobs of a burst that would call back past 15 s are answered 503 at once (a
    refused job costs one failure; a late one costs that and delays every job behind it)."""
    payloads = [payload for payload, _ in wave.burst]
    answers = [answer for _, answer in wave.burst]
    accepted = [p for p, answer in zip(payloads, answers) if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code != 200]
    turned_away = [p for p, answer in zip(payloads, answers) if answer.status_code != 200]
    assert accepted and refused, [answer.status_code for answer in answers]
    for answer in refused:
        body = answer.json()
        assert answer.status_code == 503 and body["error"] == "deadline_unreachable", body
        assert "past the 15s deadline" in body["message"] and int(answer.headers["Retry-After"]) >= 1
    for payload in accepted:  # every accepted job is answered
        assert subnet.callbacks.wait(payload["job_id"]).accepted
    assert subnet.validator.get(f"/edit/status/{turned_away[0]['job_id']}").status_code == 404  # never accepted


def _non_loopback_addresses() -> list[str]:
    """This host's own addresses that are not loopback: the host name's, and the source address of a route out (a
    UDP connect sends nothing)."""
    found: set[str] = set()
    try:
        found.update(str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    for probe in ("192.0.2.1", "10.255.255.254", "8.8.8.8"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.connect((probe, 9))
                found.add(udp.getsockname()[0])
            except OSError:
                continue
    return sorted(address for address in found if not address.startswith("127.") and address != "0.0.0.0")


def test_uuid7_is_a_version_7_uuid() -> None:
    import uuid

    value = uuid.UUID(uuid7())
    assert value.version == 7 and value.variant == uuid.RFC_4122
