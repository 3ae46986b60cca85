"""Client side of the signed doors: headers for btauth/1 and Epistula requests."""

from __future__ import annotations

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


def btauth_headers(signer: Any, *, path: str, body: bytes, receiver: str, method: str = "POST") -> dict[str, str]:
    """``signer`` is a ``bt.Wallet`` or a hotkey ``Keypair``; ``path`` exactly as sent."""
    return http_auth.sign(signer, method=method, path=path, body=body, receiver_ss58=receiver)


def epistula_headers(keypair: Any, *, body: bytes, receiver: str) -> dict[str, str]:
    """Epistula headers as the subnet orchestrator sends them (sr25519 over the signed string)."""
    timestamp = str(int(time.time() * 1000))
    request_uuid = str(uuidlib.uuid4())
    signature = bytes(keypair.sign(epistula_message(body, request_uuid, timestamp, receiver)))
    return {
        EPISTULA_SIGNATURE: "0x" + signature.hex(),
        EPISTULA_TIMESTAMP: timestamp,
        EPISTULA_UUID: request_uuid,
        EPISTULA_SIGNED_BY: keypair.ss58_address,
        EPISTULA_SIGNED_FOR: receiver,
    }
