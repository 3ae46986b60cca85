"""A stand-in for the subnet's validator: signs requests and checks callbacks the way its public code does.

Written from the validator's documented behaviour (docs/subnet.md): compact JSON bodies,
Epistula headers with a UUIDv7, a signed GET that carries the body ``{}``, and a callback receiver
that fails a job whose secret is missing or wrong, or whose image part is empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import requests
from aiohttp import web

from kontext.client.signing import uuid7
from tests.e2e.servers import ThreadedApp


class Validator:
    """Signs like the orchestrator's Epistula client: ``sha256(body).uuid.timestamp_ms.miner_hotkey``."""

    def __init__(self, keypair: Any, miner_hotkey: str, base_url: str, ca_file: str) -> None:
        self.keypair = keypair
        self.miner_hotkey = miner_hotkey
        self.base_url = base_url.rstrip("/")
        self.verify = ca_file  # certificate verification stays on, against the test CA

    def signed(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")
        request_uuid, timestamp_ms = uuid7(), int(time.time() * 1000)
        message = f"{hashlib.sha256(body).hexdigest()}.{request_uuid}.{timestamp_ms}.{self.miner_hotkey}"
        signature = "0x" + bytes(self.keypair.sign(message)).hex()
        return body, {
            "Content-Type": "application/json",
            "Authorization": f"Epistula {signature}",
            "Epistula-Signature": signature,
            "Epistula-Timestamp": str(timestamp_ms),
            "Epistula-UUID": request_uuid,
            "Epistula-Signed-By": self.keypair.ss58_address,
            "Epistula-Signed-For": self.miner_hotkey,
        }

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base_url + path, timeout=10, verify=self.verify)

    def signed_get(self, path: str) -> requests.Response:
        body, headers = self.signed({})
        return requests.get(self.base_url + path, data=body, headers=headers, timeout=10, verify=self.verify)

    def signed_post(self, path: str, payload: dict[str, Any], timeout: float = 60) -> requests.Response:
        body, headers = self.signed(payload)
        return requests.post(self.base_url + path, data=body, headers=headers, timeout=timeout, verify=self.verify)


def edit_payload(*, image_url: str, callback_url: str, seed: int, steps: int = 2) -> dict[str, Any]:
    """The validator's img-h100_pcie payload, with the fields its dispatcher adds (job_id, secret, ...)."""
    return {
        "prompt": "Add a red hat to the person",
        "negative_prompt": "bad quality, worst quality, text, signature, watermark",
        "image_url": image_url,
        "width": 1024,
        "height": 1024,
        "guidance_scale": 4.0,
        "num_inference_steps": steps,
        "enable_safety_checker": False,
        "seed": seed,
        "job_id": uuid7(),
        "callback_url": callback_url,
        "callback_secret": os.urandom(16).hex(),
        "task_type": "img-h100_pcie",
        "flux_mode": "kontext",
    }


@dataclass
class CallbackOutcome:
    job_id: str
    accepted: bool
    reason: str
    status: str
    image_sha256: Optional[str]
    received_at: float
    image_url: str = ""


@dataclass
class ValidatorCallbacks:
    """The validator's ``/results/callback``: form fields, the job's secret, a non-empty image."""

    ssl_context: ssl.SSLContext
    secrets: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, CallbackOutcome] = field(default_factory=dict)

    def start(self) -> "ValidatorCallbacks":
        async def callback(request: web.Request) -> web.Response:
            form = await request.post()
            job_id = str(form.get("job_id", ""))
            status = str(form.get("status", ""))
            image = form.get("image")
            data = image.file.read() if isinstance(image, web.FileField) else b""
            if job_id not in self.secrets:
                reason, ok = "unknown job", False
            elif request.headers.get("X-Callback-Secret") != self.secrets[job_id]:
                reason, ok = "secret missing or different", False
            elif status not in ("completed", "failed") or not form.get("completed_at"):
                reason, ok = "status or completed_at missing", False
            elif status == "completed" and not data:
                reason, ok = "empty image payload", False
            else:
                reason, ok = "ok", True
            self.outcomes[job_id] = CallbackOutcome(job_id, ok, reason, status,
                                                    hashlib.sha256(data).hexdigest() if data else None, time.time(),
                                                    str(form.get("image_url", "")))
            return web.json_response({"ok": ok, "reason": reason}, status=200 if ok else 400)

        def make_app() -> web.Application:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/results/callback", callback)
            return app

        self._server = ThreadedApp(make_app, ssl_context=self.ssl_context).start()
        self.url = f"{self._server.url}/results/callback"
        return self

    def expect(self, job_id: str, secret: str) -> None:
        self.secrets[job_id] = secret

    def wait(self, job_id: str, timeout: float = 120) -> CallbackOutcome:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if job_id in self.outcomes:
                return self.outcomes[job_id]
            time.sleep(0.05)
        raise TimeoutError(f"no callback for {job_id}")

    def stop(self) -> None:
        self._server.stop()


class ImageHost:
    """The public HTTPS URL the validator puts in ``image_url``."""

    def __init__(self, ssl_context: ssl.SSLContext, images: dict[str, bytes]) -> None:
        self.images = images
        self.requests = 0
        self._lock = threading.Lock()

        async def serve_image(request: web.Request) -> web.Response:
            with self._lock:
                self.requests += 1
            data = self.images.get(request.match_info["name"])
            return web.Response(body=data, content_type="image/png") if data else web.Response(status=404)

        def make_app() -> web.Application:
            app = web.Application()
            app.router.add_get("/inputs/{name}", serve_image)
            return app

        self._server = ThreadedApp(make_app, ssl_context=ssl_context).start()

    def url(self, name: str) -> str:
        return f"{self._server.url}/inputs/{name}"

    def stop(self) -> None:
        self._server.stop()
