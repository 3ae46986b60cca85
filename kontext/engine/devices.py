"""Which devices get an engine: KONTEXT_DEVICES (``auto``, ``cuda``, ``cpu``, or a list such as ``cuda:0,cuda:1``)."""

from __future__ import annotations

import re
from typing import Any

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def parse_devices(spec: str) -> list[str]:
    """``auto``, ``cuda`` (every GPU) and ``cpu`` as they are, or the listed devices; ``ValueError`` naming a device
    that is not cpu/cuda/cuda:N."""
    if spec.strip() in ("auto", "cuda", "cpu"):
        return [spec.strip()]
    devices = [part.strip() for part in spec.split(",") if part.strip()]
    bad = [device for device in devices if not _DEVICE.match(device)]
    if bad or not devices:
        raise ValueError(f"devices must be auto, cuda, cpu or a comma list of cpu, cuda:N; got {spec!r}")
    return devices


def resolve_devices(spec: str) -> list[str]:
    """The devices to run one engine each on. ``auto``: every visible GPU, else one CPU engine; ``cuda``: every
    visible GPU (none: one engine that refuses at load, saying why); ``cpu``: one CPU engine; a list: those."""
    devices = parse_devices(spec)
    if devices not in (["auto"], ["cuda"]):
        return devices
    import torch

    count = torch.cuda.device_count()
    if count == 0 and devices == ["cuda"]:
        return ["cuda"]  # the engine refuses it at load, with the reason, and /health says so
    return [f"cuda:{index}" for index in range(count)] or ["cpu"]


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def check_available(device: str, torch: Any) -> str:
    """``device`` if this process can use it; ``RuntimeError`` naming what is missing otherwise."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if is_cuda(device):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device}: no CUDA device is available")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
