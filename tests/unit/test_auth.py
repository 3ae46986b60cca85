"""Signature verification and the blacklist: btauth/1, Epistula, replays, receivers, permits."""

from __future__ import annotations

import time

import pytest
from bittensor.sp_core import Keypair
from multidict import CIMultiDict

from kontext.errors import Forbidden, Unauthorized
from neurons.auth import SignatureGate
from protocol.headers import epistula_message
from neurons.registry import Blacklist, Member, ValidatorRegistry, load_offline_members
from kontext.client.signing import btauth_headers, epistula_headers

MINER = Keypair.create_from_uri("//Miner")
VALIDATOR = Keypair.create_from_uri("//Validator")
NO_PERMIT = Keypair.create_from_uri("//NoPermit")
STRANGER = Keypair.create_from_uri("//Stranger")
BODY = b'{"job_id": "edit-1"}'
PATH = "/StatusSynapse"


def _verifier(gate: Blacklist = Blacklist()) -> SignatureGate:
    members = {VALIDATOR.ss58_address: Member(VALIDATOR.ss58_address, 5000.0, True),
               NO_PERMIT.ss58_address: Member(NO_PERMIT.ss58_address, 10.0, False)}
    return SignatureGate(MINER.ss58_address, ValidatorRegistry(gate, members))


class FakeRequest:
    def __init__(self, headers: dict[str, str], path: str = PATH) -> None:
        self.headers = CIMultiDict(headers)
        self.method, self.path, self.path_qs, self.remote = "POST", path, path, "127.0.0.1"


async def _call(verifier: SignatureGate, headers: dict[str, str], body: bytes = BODY, path: str = PATH) -> str:
    caller = await verifier.admit(FakeRequest(headers, path), body)  # type: ignore[arg-type]
    assert caller.hotkey is not None
    return caller.hotkey


async def test_btauth_and_epistula_accept_a_permitted_validator() -> None:
    verifier = _verifier()
    assert await _call(verifier, btauth_headers(VALIDATOR, path=PATH, body=BODY, receiver=MINER.ss58_address)) \
        == VALIDATOR.ss58_address
    assert await _call(verifier, epistula_headers(VALIDATOR, body=BODY, receiver=MINER.ss58_address)) \
        == VALIDATOR.ss58_address


@pytest.mark.parametrize("scheme", ["btauth", "epistula"])
async def test_bad_signatures_are_401(scheme: str) -> None:
    verifier = _verifier()

    def sign(body: bytes = BODY, receiver: str = MINER.ss58_address) -> dict[str, str]:
        if scheme == "btauth":
            return btauth_headers(VALIDATOR, path=PATH, body=body, receiver=receiver)
        return epistula_headers(VALIDATOR, body=body, receiver=receiver)

    with pytest.raises(Unauthorized, match="not signed"):
        await _call(verifier, {})
    with pytest.raises(Unauthorized):  # tampered body
        await _call(verifier, sign(), body=b'{"job_id": "edit-2"}')
    with pytest.raises(Unauthorized, match="different receiving hotkey"):
        await _call(verifier, sign(receiver=STRANGER.ss58_address))
    headers = sign()
    await _call(verifier, headers)
    with pytest.raises(Unauthorized, match="(?i)replay"):
        await _call(verifier, headers)


async def test_stale_requests_are_401() -> None:
    verifier = _verifier()
    old = btauth_headers(VALIDATOR, path=PATH, body=BODY, receiver=MINER.ss58_address)
    old["X-Bittensor-Nonce"] = str(time.time_ns() - 60 * 10**9)
    with pytest.raises(Unauthorized, match="StaleRequest"):
        await _call(verifier, old)
    request_uuid = "0192e3a4-5b6c-7d8e-9f00-0123456789ab"  # a UUIDv7, as the validator sends
    stale_ms = str(int(time.time() * 1000) - 9_000)
    signature = bytes(VALIDATOR.sign(epistula_message(BODY, request_uuid, stale_ms, MINER.ss58_address))).hex()
    with pytest.raises(Unauthorized, match="window"):
        await _call(verifier, {"Epistula-Signature": signature, "Epistula-Timestamp": stale_ms,
                               "Epistula-Uuid": request_uuid, "Epistula-Signed-By": VALIDATOR.ss58_address,
                               "Epistula-Signed-For": MINER.ss58_address})


async def test_epistula_uuid_must_be_a_uuid() -> None:
    """The replay check keys on the uuid; a value that is not one is refused, not stored as text."""
    now_ms = str(int(time.time() * 1000))
    signature = bytes(VALIDATOR.sign(epistula_message(BODY, "u-1", now_ms, MINER.ss58_address))).hex()
    with pytest.raises(Unauthorized, match="malformed"):
        await _call(_verifier(), {"Epistula-Signature": signature, "Epistula-Timestamp": now_ms,
                                  "Epistula-Uuid": "u-1", "Epistula-Signed-By": VALIDATOR.ss58_address,
                                  "Epistula-Signed-For": MINER.ss58_address})


async def test_btauth_path_is_bound() -> None:
    headers = btauth_headers(VALIDATOR, path="/ResultSynapse", body=BODY, receiver=MINER.ss58_address)
    with pytest.raises(Unauthorized, match="BadSignature"):
        await _call(_verifier(), headers, path="/EditSynapse")


async def test_blacklist_unknown_hotkey_and_missing_permit_are_403() -> None:
    verifier = _verifier()
    with pytest.raises(Forbidden, match="not registered"):
        await _call(verifier, btauth_headers(STRANGER, path=PATH, body=BODY, receiver=MINER.ss58_address))
    with pytest.raises(Forbidden, match="no validator permit"):
        await _call(verifier, epistula_headers(NO_PERMIT, body=BODY, receiver=MINER.ss58_address))


async def test_blacklist_switches() -> None:
    relaxed = _verifier(Blacklist(force_validator_permit=False, allow_non_registered=True))
    for caller in (STRANGER, NO_PERMIT):
        assert await _call(relaxed, epistula_headers(caller, body=BODY, receiver=MINER.ss58_address)) \
            == caller.ss58_address


def test_rejections_are_counted() -> None:
    reasons: list[str] = []
    verifier = _verifier()
    verifier.on_reject = reasons.append
    import asyncio

    with pytest.raises(Unauthorized):
        asyncio.run(_call(verifier, {}))
    with pytest.raises(Forbidden):
        asyncio.run(_call(verifier, epistula_headers(STRANGER, body=BODY, receiver=MINER.ss58_address)))
    assert reasons == ["bad_signature", "forbidden"]


def test_offline_members_inline_and_file(tmp_path) -> None:
    inline = load_offline_members(f"{VALIDATOR.ss58_address}:100,{NO_PERMIT.ss58_address}:5:nopermit")
    assert inline[VALIDATOR.ss58_address] == Member(VALIDATOR.ss58_address, 100.0, True)
    assert inline[NO_PERMIT.ss58_address].validator_permit is False
    path = tmp_path / "validators.json"
    path.write_text('{"%s": {"stake": 7, "validator_permit": true}}' % STRANGER.ss58_address)
    assert load_offline_members(str(path))[STRANGER.ss58_address].stake == 7.0


async def test_sidecar_edit_can_require_signatures(aiohttp_client, tmp_path) -> None:
    """SIDECAR_REQUIRE_SIGNATURE: the orchestrator's Epistula-signed POST /edit is the only way in."""
    import base64
    import json

    from kontext.runtime import Runtime
    from kontext.http.app import create_app
    from tests.fakes import FakeEngine, png_bytes
    from tests.unit.test_sidecar import make_settings

    settings = make_settings(tmp_path, sidecar_require_signature=True)
    verifier = _verifier()
    app = create_app(Runtime(settings, engine=FakeEngine()), gate=verifier, manage_runtime=True)
    client = await aiohttp_client(app)
    body = json.dumps({"prompt": "p", "seed": 1, "image_b64": base64.b64encode(png_bytes()).decode()}).encode()
    unsigned = await client.post("/edit", data=body)
    assert unsigned.status == 401 and (await unsigned.json())["error"] == "unauthorized"
    signed = await client.post("/edit", data=body,
                               headers=epistula_headers(VALIDATOR, body=body, receiver=MINER.ss58_address))
    assert signed.status == 200 and (await signed.json())["accepted"] is True
    stranger = await client.post("/edit", data=body,
                                 headers=epistula_headers(STRANGER, body=body, receiver=MINER.ss58_address))
    assert stranger.status == 403


async def test_a_huge_epistula_timestamp_is_401_not_a_crash() -> None:
    headers = epistula_headers(VALIDATOR, body=BODY, receiver=MINER.ss58_address)
    headers["Epistula-Timestamp"] = "1" + "0" * 400  # an int too large for a float
    with pytest.raises(Unauthorized, match="window"):
        await _call(_verifier(), headers)


@pytest.mark.parametrize("scheme", ["btauth", "epistula"])
async def test_signature_headers_that_are_not_ascii_are_401(scheme: str) -> None:
    """aiohttp hands on a header's undecodable bytes as surrogates; they must not reach the verifiers."""
    if scheme == "btauth":
        headers = btauth_headers(VALIDATOR, path=PATH, body=BODY, receiver=MINER.ss58_address)
        headers["X-Bittensor-Hotkey"] = VALIDATOR.ss58_address + "\udcff"
    else:
        headers = epistula_headers(VALIDATOR, body=BODY, receiver=MINER.ss58_address)
        headers["Epistula-Signed-By"] = VALIDATOR.ss58_address + "\udcff"
    with pytest.raises(Unauthorized, match="ASCII"):
        await _call(_verifier(), headers)


async def test_the_miners_own_hotkey_is_admitted_with_no_priority() -> None:
    """The operator tries the miner with the wallet they mine with (``kontext-client preflight``): admitted though
    neither registered as a validator nor permitted, and never ahead of a validator's jobs."""
    members = {VALIDATOR.ss58_address: Member(VALIDATOR.ss58_address, 5000.0, True)}
    gate = SignatureGate(MINER.ss58_address, ValidatorRegistry(Blacklist(), members, own_hotkey=MINER.ss58_address))
    caller = await gate.admit(FakeRequest(epistula_headers(MINER, body=BODY, receiver=MINER.ss58_address)),  # type: ignore[arg-type]
                              BODY)
    assert caller.hotkey == MINER.ss58_address and caller.priority == 0.0
    with pytest.raises(Forbidden, match="not registered"):  # another unregistered key still is not
        await gate.admit(FakeRequest(epistula_headers(STRANGER, body=BODY, receiver=MINER.ss58_address)),  # type: ignore[arg-type]
                         BODY)
