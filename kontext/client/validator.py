"""The subnet validator's requests, as the preflight and the conformance replay make them: its edit payload,
compact JSON, Epistula-signed calls (a signed GET carries the body ``{}``), and its time limits."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
from typing import Any, Optional

from kontext.client.http import Http, Reply
from kontext.client.signing import epistula_headers, uuid7
from protocol.limits import JOB_TYPE_KONTEXT_EDIT

CHECK_TIMEOUT_S = 10.0
"""The validator's timeout for ``GET /``, and how long a dispatch may take to be answered (the reference miner's
front proxy gives up after 10 s)."""
CALLBACK_NOT_BEFORE_S = 8.0
"""The validator fails a callback that arrives earlier than this after it created the job."""
CALLBACK_DEADLINE_S = 15.0
"""... or later than this after dispatch."""
PROMPT = "Add a red hat to the person"
NEGATIVE_PROMPT = "bad quality, worst quality, text, signature, watermark"


def edit_payload(*, seed: int, image_url: Optional[str] = None, image_b64: Optional[str] = None,
                 callback_url: Optional[str] = None, prompt: str = PROMPT) -> dict[str, Any]:
    """The validator's ``img-h100_pcie`` dispatch body, field for field (subnet.md §3). The image is
    ``image_url`` where given (the validator's choice), else ``image_b64``; ``callback_url`` only when given."""
    payload: dict[str, Any] = {"prompt": prompt, "negative_prompt": NEGATIVE_PROMPT}
    payload.update({"image_url": image_url} if image_url else {"image_b64": image_b64})
    payload.update({
        "width": 1024, "height": 1024, "guidance_scale": 4.0, "num_inference_steps": 10,
        "enable_safety_checker": False, "seed": seed, "job_id": uuid7(),
    })
    if callback_url:
        payload["callback_url"] = callback_url
    payload.update({"callback_secret": secrets.token_hex(16), "task_type": JOB_TYPE_KONTEXT_EDIT,
                    "flux_mode": "kontext"})
    return payload


def compact(payload: Any) -> bytes:
    """The validator's JSON: no spaces."""
    return json.dumps(payload, separators=(",", ":")).encode()


def sample_image_b64(size: int = 512) -> str:
    """A generated input (gradients in three directions), base64 PNG: for runs given no ``--image-url``."""
    from PIL import Image

    ramp = Image.linear_gradient("L").resize((size, size))
    image = Image.merge("RGB", (ramp, ramp.rotate(90), Image.radial_gradient("L").resize((size, size))))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def random_seed() -> int:
    """A seed as the validator's are: below 2**32."""
    return int.from_bytes(os.urandom(4), "big")


class SignedDoor:
    """A miner's public door, called as the validator calls it: Epistula signed for ``receiver`` by ``keypair``."""

    def __init__(self, http: Http, base_url: str, keypair: Any, receiver: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.keypair = keypair
        self.receiver = receiver

    def get(self, path: str, *, timeout: float = CHECK_TIMEOUT_S) -> Reply:
        """Unsigned, as the validator's reachability checks."""
        return self.http.get(self.base_url + path, timeout=timeout)

    def read(self, path: str, *, timeout: float = CHECK_TIMEOUT_S) -> Reply:
        """A GET the validator never makes (status, result, health): unsigned, and signed where the door asks."""
        reply = self.get(path, timeout=timeout)
        return self.signed("GET", path, {}, timeout=timeout) if reply.status == 401 else reply

    def signed(self, method: str, path: str, payload: Any, *, timeout: float = 60.0) -> Reply:
        body = compact(payload)
        headers = {"Content-Type": "application/json",
                   **epistula_headers(self.keypair, body=body, receiver=self.receiver)}
        return self.http.request(method, self.base_url + path, body=body, headers=headers, timeout=timeout)

    def unsigned_post(self, path: str, payload: Any, *, timeout: float = CHECK_TIMEOUT_S) -> Reply:
        return self.http.request("POST", self.base_url + path, body=compact(payload),
                                 headers={"Content-Type": "application/json"}, timeout=timeout)
