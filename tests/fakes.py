"""Test doubles: a fast deterministic stand-in for KontextEngine, a recording deliverer, a table DNS."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import socket
import threading
import time
from typing import Callable, Optional

from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image

from kontext.engine.engine import EditOutput, EngineState
from protocol import CallbackPayload, CallbackRecord, CallbackStatus


FAIL_PROMPT = "fail on purpose"


class FakeEngine:
    """Same surface as KontextEngine; the "edit" is a PNG whose colour is a hash of the inputs.

    ``gate`` (if given) holds each job after its first step until the test sets it, so tests can
    observe a job while it runs.
    """

    def __init__(self, *, fail_load: Optional[str] = None, gate: Optional[threading.Event] = None) -> None:
        self.state = EngineState.UNLOADED
        self.error: Optional[str] = None
        self.device = "cpu"
        self.fail_load = fail_load
        self.gate = gate
        self.calls: list[tuple[bytes, object]] = []
        self.on_device = False
        self._device = threading.Lock()

    def load(self) -> None:
        self.state = EngineState.LOADING
        if self.fail_load:
            self.state, self.error = EngineState.FAILED, self.fail_load
        else:
            self.state = EngineState.READY

    def describe(self) -> dict:
        return {"state": self.state.value, "error": self.error, "device": self.device, "recipe": "fake-v1"}

    def edit(self, image_bytes: bytes, params: object, *, max_pixels: int,
             on_step: Optional[Callable[[int, int], None]] = None) -> EditOutput:
        return self.encode(self.denoise(self.prepare(image_bytes, params, max_pixels=max_pixels), on_step=on_step))

    def prepare(self, image_bytes: bytes, params: object, *, max_pixels: int) -> tuple[bytes, object]:
        try:
            with Image.open(io.BytesIO(image_bytes)) as source:
                source.load()
        except Exception as exc:  # noqa: BLE001 - mirrors the recipe's ValueError contract
            raise ValueError(f"not an image: {exc}") from None
        if getattr(params, "prompt", "") == FAIL_PROMPT:
            raise ValueError("this prompt always fails (test double)")
        return image_bytes, params

    def denoise(self, prepared: tuple[bytes, object], *,
                on_step: Optional[Callable[[int, int], None]] = None) -> tuple[bytes, object]:
        with self._device:
            assert not self.on_device, "two edits on one engine at once"
            self.on_device = True
            try:
                return self._steps(prepared, on_step)
            finally:
                self.on_device = False

    def _steps(self, prepared: tuple[bytes, object],
               on_step: Optional[Callable[[int, int], None]]) -> tuple[bytes, object]:
        image_bytes, params = prepared
        self.calls.append((image_bytes, params))
        total = getattr(params, "num_inference_steps", 1)
        for step in range(1, total + 1):
            if on_step:
                on_step(step, total)
            if step == 1 and self.gate is not None:
                deadline = time.monotonic() + 30
                while not self.gate.wait(0.05) and time.monotonic() < deadline:
                    if on_step:  # a real engine keeps reporting steps: an interrupt can stop it meanwhile
                        on_step(step, total)
        return prepared

    def encode(self, denoised: tuple[bytes, object]) -> EditOutput:
        image_bytes, params = denoised
        digest = hashlib.sha256(image_bytes + repr(params).encode()).digest()
        image = Image.new("RGB", (16, 16), tuple(digest[:3]))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        png = buffer.getvalue()
        return EditOutput(png, hashlib.sha256(png).hexdigest(), hashlib.sha256(image.tobytes()).hexdigest(), 16, 16,
                          "fake-v1", 0.0)


class RecordingDeliverer:
    """Stands in for CallbackSender: records each delivery and answers ``delivered``."""

    def __init__(self, status_code: int = 200) -> None:
        self.status_code = status_code
        self.sent: list[tuple[str, Optional[str], CallbackPayload, Optional[bytes]]] = []

    async def deliver(self, url: str, secret: Optional[str], payload: CallbackPayload,
                      png: Optional[bytes]) -> CallbackRecord:
        from datetime import datetime, timezone

        self.sent.append((url, secret, payload, png))
        ok = 200 <= self.status_code < 300
        return CallbackRecord(
            status=CallbackStatus.DELIVERED if ok else CallbackStatus.FAILED,
            status_code=self.status_code,
            attempted_at=datetime.now(timezone.utc),
            payload_status=payload.status,
        )

    async def has_sent(self) -> bool:
        """For ``tests.waiting.until``: a delivery was made."""
        return bool(self.sent)


def png_bytes(size: tuple[int, int] = (32, 32), colour: tuple[int, int, int] = (120, 30, 200),
              fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


class TableResolver(AbstractResolver):
    """DNS from a dict: aiohttp sends only names (never IP literals) to a resolver, so guard tests need names.

    ``answers`` may be changed between requests (DNS rebinding); ``asked`` lists the names looked up.
    """

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"{host}: no such name in the test table")
        return [ResolveResult(hostname=host, host=address, port=port, proto=0, flags=socket.AI_NUMERICHOST,
                              family=socket.AF_INET6 if ipaddress.ip_address(address).version == 6
                              else socket.AF_INET)
                for address in self.answers[host]]

    async def close(self) -> None:
        return None
