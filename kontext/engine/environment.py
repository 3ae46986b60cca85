"""The versions that decide an edit's bytes, read from the running process.

Pixels depend on torch, CUDA/cuBLAS/cuDNN, diffusers, transformers (with tokenizers and ftfy: the
token ids), numpy and the GPU model; on the CPU, on the processor too: torch, MKL and oneDNN pick
their float kernels by its vendor and vector extensions (AVX2, AVX-512), and those kernels sum in
other orders. The PNG bytes of identical pixels depend on the zlib Pillow compresses with (on
Linux the host's libz; Pillow's macOS and Windows wheels bundle zlib-ng, whose output differs from
classic zlib and may change between its releases).
"""

from __future__ import annotations

import platform
from typing import Optional


def _version(distribution: str) -> str:
    """An installed distribution's version, or ``"None"`` (ftfy is optional: without it the slow CLIP tokenizer
    of transformers 4 cleans prompts differently)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "None"


def cpu_kernels() -> dict[str, str]:
    """The processor's vendor and the vector extensions torch's CPU kernels use (``AVX2``, ``AVX512``, ...)."""
    import torch

    return {"cpu_vendor": _cpu_vendor(), "cpu_kernels": torch.backends.cpu.get_cpu_capability()}


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() in ("vendor_id", "CPU implementer"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pixel_and_png_stack(device_name: Optional[str] = None) -> dict[str, str]:
    """Name -> version of everything that decides the pixels and the PNG bytes (JSON-friendly); on the CPU
    also the processor's kernels (``cpu_kernels``)."""
    import diffusers
    import PIL
    import torch
    import transformers
    from PIL import features

    cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    device = device_name or (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    stack = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": device,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cudnn": str(cudnn),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": _version("tokenizers"),
        "ftfy": _version("ftfy"),
        "numpy": _version("numpy"),
        "pillow": PIL.__version__,
        "zlib": str(features.version("zlib")),
        "zlib_ng": str(features.version_feature("zlib_ng") if "zlib_ng" in features.features else None),
    }
    if device.startswith("cpu"):
        stack.update(cpu_kernels())
    return stack
