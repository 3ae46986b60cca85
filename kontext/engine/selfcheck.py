"""Warm-up and golden-hash self-check: refuse to serve when the same edit no longer gives the same bytes.

A driver, CUDA, torch or diffusers update can silently change the numbers; the subnet's audit
would then fail every job. At start the engine runs one fixed edit and compares its SHA256
with the hash recorded for this recipe + engine profile + hardware + library versions.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from kontext.media.files import write_atomic
from kontext.engine.environment import pixel_and_png_stack
from kontext.engine.recipes import EditParams

SELF_CHECK_PARAMS = EditParams(prompt="self-check: add a small red hat", seed=20251014, guidance_scale=2.5,
                               num_inference_steps=2, width=64, height=64)


def self_check_image() -> bytes:
    """A fixed 64x64 gradient PNG (built, not loaded: nothing to ship or download)."""
    from PIL import Image

    image = Image.new("RGB", (64, 64))
    image.putdata([(x * 4, y * 4, (x + y) * 2) for y in range(64) for x in range(64)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class SelfCheckResult:
    status: str
    """``recorded`` (first run on this key), ``match``, ``drift`` or ``off``."""
    key: str
    actual: Optional[str] = None
    expected: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "key": self.key, "actual": self.actual, "expected": self.expected}


def environment_key(*, recipe: str, profile: str, device_name: str, model_path: str) -> tuple[str, dict[str, str]]:
    """What must stay the same for the bytes to stay the same, and its short hash."""
    details = {"recipe": recipe, "profile": profile, "model": model_path, **pixel_and_png_stack(device_name)}
    digest = hashlib.sha256(json.dumps(details, sort_keys=True).encode()).hexdigest()[:16]
    return digest, details


def verify(golden_file: Path, key: str, details: dict[str, str], actual: str) -> SelfCheckResult:
    """Compare with the recorded hash for ``key``; record it when there is none yet."""
    golden = json.loads(golden_file.read_text()) if golden_file.is_file() else {}
    entry = golden.get(key)
    if entry is None:
        golden[key] = {"sha256": actual, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       **details}
        write_atomic(golden_file, json.dumps(golden, indent=2, sort_keys=True).encode())
        return SelfCheckResult("recorded", key, actual)
    expected = entry["sha256"]
    return SelfCheckResult("match" if expected == actual else "drift", key, actual, expected)
