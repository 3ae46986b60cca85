"""The signed gate of the public door (and of a signed sidecar): btauth/1 or Epistula, blacklist, priority."""

from __future__ import annotations

import time
import uuid
from typing import Callable, Mapping, Optional

from aiohttp import web
from bittensor import http_auth
from bittensor.sp_core import CRYPTO_SR25519
from bittensor.sp_core import verify as sr25519_verify

from kontext.errors import Forbidden, Unauthorized
from kontext.http.gate import Caller
from neurons.registry import ValidatorRegistry
from protocol.headers import (
    EPISTULA_SIGNATURE,
    EPISTULA_SIGNED_BY,
    EPISTULA_SIGNED_FOR,
    EPISTULA_TIMESTAMP,
    EPISTULA_UUID,
    epistula_message,
)

EPISTULA_MAX_AGE_MS = 8_000
"""The reference miner's allowed skew for Epistula timestamps."""
_SIGNATURE_HEADER_PREFIXES = ("x-bittensor-", "epistula-")
REPLAY_RETENTION_S = 60.0
"""How long a (hotkey, nonce) pair is remembered: longer than either scheme's freshness window."""


class SignatureGate:
    """Authenticates a request, applies the blacklist and gives the caller its stake as priority.

    401 for anything about the signature (missing, malformed, stale, tampered, replayed, for
    another receiver); 403 when a valid caller is not allowed (not registered, no permit). The
    signature is checked over the body bytes as received, whatever the method: the validator's
    signed ``GET /capacity`` carries the body ``{}``.
    """

    def __init__(self, self_hotkey: str, registry: ValidatorRegistry, *,
                 on_reject: Optional[Callable[[str], None]] = None) -> None:
        self.self_hotkey = self_hotkey
        self.registry = registry
        self.on_reject = on_reject
        self._btauth_nonces = http_auth.InMemoryNonceStore(retention=REPLAY_RETENTION_S)
        self._epistula_nonces = http_auth.InMemoryNonceStore(retention=REPLAY_RETENTION_S)

    async def admit(self, request: web.Request, body: bytes) -> Caller:
        try:
            hotkey = self.authenticate(request.headers, body, method=request.method, path=request.path_qs)
            refusal = self.registry.refusal(hotkey)
            if refusal:
                raise Forbidden(refusal)
        except (Unauthorized, Forbidden) as exc:  # logged once, by the JSON error middleware
            if self.on_reject:
                self.on_reject("forbidden" if isinstance(exc, Forbidden) else "bad_signature")
            raise
        return Caller(hotkey=hotkey, priority=self.registry.stake(hotkey))

    def authenticate(self, headers: Mapping[str, str], body: bytes, *, method: str, path: str) -> str:
        """The caller's hotkey, or ``Unauthorized``."""
        lowered = {k.lower() for k in headers}
        for name, value in headers.items():  # undecodable bytes arrive as surrogates: refuse them here, once
            if name.lower().startswith(_SIGNATURE_HEADER_PREFIXES) and not value.isascii():
                raise Unauthorized(f"signature header {name} must be ASCII")
        if http_auth.HEADER_SIGNATURE.lower() in lowered:
            return self._btauth(headers, body, method, path)
        if EPISTULA_SIGNATURE.lower() in lowered:
            return self._epistula(headers, body)
        raise Unauthorized("request is not signed: send btauth/1 (X-Bittensor-*) or Epistula-* headers")

    def _btauth(self, headers: Mapping[str, str], body: bytes, method: str, path: str) -> str:
        try:
            caller = http_auth.verify(dict(headers), body, method=method, path=path,
                                      self_hotkey_ss58=self.self_hotkey, nonce_store=self._btauth_nonces)
        except http_auth.AuthError as exc:
            raise Unauthorized(f"btauth/1: {type(exc).__name__}: {exc}") from None
        return caller.hotkey_ss58

    def _epistula(self, headers: Mapping[str, str], body: bytes) -> str:
        get = {k.lower(): v for k, v in headers.items()}.get
        signature, timestamp = get(EPISTULA_SIGNATURE.lower()), get(EPISTULA_TIMESTAMP.lower())
        request_uuid, signed_by = get(EPISTULA_UUID.lower()), get(EPISTULA_SIGNED_BY.lower())
        signed_for = get(EPISTULA_SIGNED_FOR.lower(), "")
        if not (signature and timestamp and request_uuid and signed_by):
            raise Unauthorized("Epistula: Signature, Timestamp, Uuid and Signed-By headers are required")
        if signed_for != self.self_hotkey:
            raise Unauthorized("Epistula: request was signed for a different receiving hotkey")
        try:
            timestamp_ms = int(timestamp)
            signature_bytes = bytes.fromhex(signature.removeprefix("0x"))
            nonce = uuid.UUID(request_uuid).int
        except ValueError:
            raise Unauthorized("Epistula: timestamp, uuid or signature is malformed") from None
        if abs(time.time_ns() // 1_000_000 - timestamp_ms) > EPISTULA_MAX_AGE_MS:  # integers: any size compares
            raise Unauthorized(f"Epistula: timestamp is outside the {EPISTULA_MAX_AGE_MS // 1000}s window")
        message = epistula_message(body, request_uuid, timestamp, signed_for)
        try:
            valid = sr25519_verify(message, signature_bytes, signed_by, CRYPTO_SR25519)
        except ValueError:
            raise Unauthorized("Epistula: invalid hotkey address or signature encoding") from None
        if not valid:
            raise Unauthorized("Epistula: signature does not verify against Signed-By")
        if not self._epistula_nonces.check_and_store(signed_by, nonce):
            raise Unauthorized("Epistula: this uuid was already used (replay)")
        return signed_by
