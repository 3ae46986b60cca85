"""Client side of the signed doors: headers for btauth/1 and Epistula requests."""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from typing import Any

from bittensor import http_auth

from protocol.headers import (
    EPISTULA_SIGNATURE,
    EPISTULA_SIGNED_BY,
    EPISTULA_SIGNED_FOR,
    EPISTULA_TIMESTAMP,
    EPISTULA_UUID,
    epistula_message,
)


def uuid7() -> str:
    """A UUIDv7 (48-bit millisecond time, version 7, variant 10), as the validator's job and request ids are
    (``uuid.uuid7`` arrives only with Python 3.14)."""
    value = int(time.time() * 1000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuidlib.UUID(int=value))


def btauth_headers(signer: Any, *, path: str, body: bytes, receiver: str, method: str = "POST") -> dict[str, str]:
    """``signer`` is a ``bt.Wallet`` or a hotkey ``Keypair``; ``path`` exactly as sent."""
    return http_auth.sign(signer, method=method, path=path, body=body, receiver_ss58=receiver)


def epistula_headers(keypair: Any, *, body: bytes, receiver: str) -> dict[str, str]:
    """Epistula headers as the subnet orchestrator sends them (sr25519 over the signed string, a UUIDv7, and the
    signature again as ``Authorization: Epistula 0x...``)."""
    timestamp = str(int(time.time() * 1000))
    request_uuid = uuid7()
    signature = "0x" + bytes(keypair.sign(epistula_message(body, request_uuid, timestamp, receiver))).hex()
    return {
        EPISTULA_SIGNATURE: signature,
        "Authorization": f"Epistula {signature}",
        EPISTULA_TIMESTAMP: timestamp,
        EPISTULA_UUID: request_uuid,
        EPISTULA_SIGNED_BY: keypair.ss58_address,
        EPISTULA_SIGNED_FOR: receiver,
    }
