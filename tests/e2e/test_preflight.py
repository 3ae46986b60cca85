"""`kontext-client preflight` against the real neuron as the README starts it (offline, HTTPS with a throwaway CA, the
subnet profile's 8 s callback rule): it passes signed with the miner's own wallet and fails against another hotkey,
a certificate it cannot verify or one for another name. The neuron is the validator module's (one process)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from kontext.client.cli import main
from tests.e2e.conftest import README_NEURON, Subnet
from tests.e2e.servers import CallbackReceiver
from tests.e2e.validator import ImageHost

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group(README_NEURON)]


@pytest.fixture
def door(readme_neuron: Subnet) -> Subnet:
    """The neuron as an operator starts it (tests/e2e/conftest.py), with a certificate for 127.0.0.1 only, and a
    wallet of another hotkey beside the miner's."""
    return readme_neuron


def preflight(capsys: pytest.CaptureFixture[str], door: Subnet, *flags: str, axon: str = "",
              hotkey: str = "", cacert: bool = True, after: tuple[str, ...] = ()) -> tuple[int, dict[str, str]]:
    """Run the command in this process: (exit code, check name -> "VERDICT what was seen")."""
    argv = ["--axon", axon or door.neuron.axon_url, "--miner-hotkey", hotkey or door.miner_hotkey,
            *door.wallet_flags, *(["--cacert", str(door.ca_file)] if cacert else []), *flags, "preflight", *after]
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
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


def test_passes_signed_with_the_miners_own_wallet(capsys, door: Subnet) -> None:
    """As the validator sends it: the input at a public https URL, a callback receiver."""
    images = ImageHost(door.server_ssl, {"in.png": _png()})
    receiver = CallbackReceiver().start()
    try:
        code, checks = preflight(capsys, door, "--subtensor.network", "offline", after=(
            "--image-url", images.url("in.png"), "--callback-url", f"http://127.0.0.1:{receiver.port}/cb"))
    finally:
        images.stop()
        receiver.stop()
    assert code == 0, {name: line for name, line in checks.items() if not line.startswith(("PASS", "SKIP"))}
    for name in ("TLS", "GET /", "GET /check/{hotkey}", "signed GET /capacity", "signed POST /edit",
                 "timing (done by 15 s)", "timing (callback not before 8 s)", "callback", "POST /sync/edit",
                 "unsigned POST /edit"):
        assert checks[name].startswith("PASS"), checks[name]
    assert '"img-h100_pcie": true' in checks["signed GET /capacity"]
    assert "input from --image-url" in checks["signed POST /edit"] and images.requests >= 1
    assert checks["callback"].startswith("PASS delivered (HTTP 200)")
    job_id = checks["signed POST /edit"].split("job ", 1)[1].split(";", 1)[0]
    assert job_id in [callback.fields.get("job_id") for callback in receiver.received]  # what the status said
    assert checks["unsigned POST /edit"].startswith("PASS refused: 401")
    assert checks["chain commitment"] == "SKIP --subtensor.network offline: no chain to read the commitment from"


def test_fails_against_a_miner_with_another_hotkey(capsys, door: Subnet) -> None:
    code, checks = preflight(capsys, door, hotkey=door.other_hotkey)
    assert code == 1
    assert checks["GET /check/{hotkey}"].startswith(f"FAIL 404 for {door.other_hotkey}")
    for name in ("signed GET /capacity", "signed POST /edit"):  # signed for another receiver: refused
        assert checks[name].startswith("FAIL 401: Epistula: request was signed for a different receiving hotkey")
        assert f"give --miner-hotkey the hotkey it serves ({door.miner_hotkey})" in checks[name]
    assert "(input: image_b64 of a generated 512x512 image (no --image-url" in checks["signed POST /edit"]
    assert checks["POST /sync/edit"].startswith("SKIP")


def test_fails_on_a_certificate_it_cannot_verify_or_for_another_name(capsys, door: Subnet) -> None:
    code, checks = preflight(capsys, door, cacert=False)
    assert code == 1 and "does not verify: unable to get local issuer certificate" in checks["TLS"]
    assert checks["GET /"] == "SKIP not tried: TLS failed (above)"
    code, checks = preflight(capsys, door, axon=door.neuron.axon_url.replace("127.0.0.1", "localhost"))
    assert code == 1 and "Hostname mismatch" in checks["TLS"] and "names localhost" in checks["TLS"]


def test_conformance_on_the_signed_door_against_its_own_sidecar(capsys, door: Subnet, tmp_path: Path) -> None:
    """--axon: the cases go through the validator's signed POST /edit; equal bytes with the plain sidecar."""
    (tmp_path / "in.png").write_bytes(_png())
    case = {"name": "small", "image_file": "in.png",
            "request": {"prompt": "Add a red hat", "seed": 5, "num_inference_steps": 2, "guidance_scale": 4.0}}
    (tmp_path / "cases.jsonl").write_text(json.dumps(case) + "\n")
    main(["--axon", door.neuron.axon_url, "--miner-hotkey", door.miner_hotkey, *door.wallet_flags,
          "--cacert", str(door.ca_file), "conformance", str(tmp_path / "cases.jsonl"), "--against", door.neuron.url])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("EQUAL     small: this=") and lines[-1].startswith("1/1 case(s) give the same")
