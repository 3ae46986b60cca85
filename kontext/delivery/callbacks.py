"""Webhook delivery: one multipart POST per finished job, signed, never retried, never raising.

Signature scheme (when the request carried a ``callback_secret``)::

    X-Callback-Secret:    <the secret>                   (as the specification asks)
    X-Callback-Timestamp: <unix seconds>
    X-Callback-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.".encode() + raw_body)>

Receivers verify the signature over the raw body bytes they read (``verify_signature``), and
may refuse old timestamps to stop replays. The body is rendered to bytes once and those exact
bytes are sent, so what is signed is what arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from datetime import datetime, timezone
from typing import Optional

import aiohttp

from kontext.delivery.guard import check_url, find_refusal
from protocol import CallbackPayload, CallbackRecord, CallbackStatus
from protocol.headers import (
    CALLBACK_SECRET_HEADER,
    CALLBACK_SIGNATURE_HEADER,
    CALLBACK_TIMESTAMP_HEADER,
    RECIPE_HEADER,
)

ERROR_MAX_CHARS = 300
BODY_EXCERPT_CHARS = 200


def sign_body(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: int | str, body: bytes, header_value: str) -> bool:
    return hmac.compare_digest(sign_body(secret, int(timestamp), body), header_value)


async def render_form(payload: CallbackPayload, png: Optional[bytes]) -> tuple[bytes, str]:
    """(body bytes, content type) of the multipart form: text fields, then the ``image`` file part."""
    writer = aiohttp.MultipartWriter("form-data", boundary=f"kontext-{uuid.uuid4().hex}")
    for name, value in payload.form_fields().items():
        part = writer.append(value, {"Content-Type": "text/plain; charset=utf-8"})
        part.set_content_disposition("form-data", name=name)
    if png is not None:
        part = writer.append(png, {"Content-Type": "image/png"})
        part.set_content_disposition("form-data", name="image", filename=f"{payload.job_id}.png")
    return await writer.as_bytes(), writer.content_type


class CallbackSender:
    def __init__(self, session: aiohttp.ClientSession, *, timeout: float, allow_private: bool) -> None:
        self.session = session
        self.timeout = timeout
        self.allow_private = allow_private

    async def deliver(self, url: str, secret: Optional[str], payload: CallbackPayload,
                      png: Optional[bytes]) -> CallbackRecord:
        """Exactly one attempt. Every outcome becomes a ``CallbackRecord``; nothing is raised."""
        attempted_at = datetime.now(timezone.utc)

        def record(status: CallbackStatus, code: Optional[int] = None, error: Optional[str] = None) -> CallbackRecord:
            return CallbackRecord(status=status, status_code=code, attempted_at=attempted_at,
                                  payload_status=payload.status, error=_scrub(error, secret))

        try:
            check_url(url, allow_private=self.allow_private)
            body, content_type = await render_form(payload, png)
            headers = {"Content-Type": content_type, "User-Agent": "kontext-miner"}
            if payload.recipe:
                headers[RECIPE_HEADER] = payload.recipe
            if secret:
                timestamp = int(time.time())
                headers[CALLBACK_SECRET_HEADER] = secret
                headers[CALLBACK_TIMESTAMP_HEADER] = str(timestamp)
                headers[CALLBACK_SIGNATURE_HEADER] = sign_body(secret, timestamp, body)
            async with self.session.post(url, data=body, headers=headers, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                if 200 <= response.status < 300:
                    return record(CallbackStatus.DELIVERED, response.status)
                # a few hundred bytes at most: a receiver's error body can be as large as it likes
                excerpt = (await response.content.read(BODY_EXCERPT_CHARS)).decode("utf-8", "replace")
                kind = "redirect (not followed)" if 300 <= response.status < 400 else f"HTTP {response.status}"
                return record(CallbackStatus.FAILED, response.status, f"{kind}: {excerpt}".strip(": "))
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            return record(CallbackStatus.FAILED, error=f"timeout after {self.timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - any failure is a recorded outcome
            refusal = find_refusal(exc)
            return record(CallbackStatus.FAILED, error=str(refusal) if refusal else f"{type(exc).__name__}: {exc}")


def _scrub(error: Optional[str], secret: Optional[str]) -> Optional[str]:
    if error is None:
        return None
    if secret:
        error = error.replace(secret, "***")
    return error[:ERROR_MAX_CHARS]
