"""The versions that decide an edit's bytes, read from the running process, and how they stand against the auditor's.

Pixels depend on torch, CUDA/cuBLAS/cuDNN, diffusers, transformers (with tokenizers and ftfy: the
token ids), numpy and the GPU model; on the CPU, on the processor too: torch, MKL and oneDNN pick
their float kernels by its vendor and vector extensions (AVX2, AVX-512), and those kernels sum in
other orders. The PNG bytes of identical pixels depend on the deflate library under Pillow's PNG
writer: on Linux the host's libz.so.1 (Pillow's Linux wheels link it and never bundle it, even when
built against zlib-ng's headers); Pillow's macOS and Windows wheels bundle zlib-ng, whose output
differs from classic zlib and may change between its releases. Classic zlib 1.2.11, 1.2.13 and 1.3.1
write the same bytes (docs/subnet.md §8).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Optional

AUDITOR_PYTHON = "3.10"
AUDITOR_ZLIB = "1.2.11"
AUDITOR_OS = "Ubuntu 22.04"
"""The auditor's container: Python 3.10 on Ubuntu 22.04, whose zlib 1.2.11 writes its PNGs."""
ZLIB_NG_SUFFIX = ".zlib-ng"
"""How zlib-ng's zlib-compatible build names itself at run time (e.g. ``1.3.1.zlib-ng``)."""


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


@dataclass(frozen=True)
class PngDeflate:
    """The library that compresses this process's PNGs."""

    library: str
    """``zlib`` (classic) or ``zlib-ng``."""
    version: str
    """The version it reports at run time (``zlibVersion()``, through Pillow)."""

    def __str__(self) -> str:
        return f"{self.library} {self.version}"


def png_deflate() -> PngDeflate:
    """Which deflate library writes this process's PNGs (Pillow's zlib encoder), from ``PIL.features``."""
    from PIL import features

    runtime = str(features.version("zlib"))
    built_with_ng = features.version_feature("zlib_ng") if "zlib_ng" in features.features else None
    return PngDeflate(deflate_library(runtime, built_with_ng, platform.system()), runtime)


def deflate_library(runtime: str, built_with_ng: Optional[str], system: str) -> str:
    """``zlib-ng`` when zlib-ng writes the PNG, else ``zlib``.

    ``runtime`` is the loaded library's own version: zlib-ng's zlib-compatible build ends it in ``.zlib-ng``
    (a distribution's system libz, as on Fedora 40 and later, or the copy Pillow's macOS and Windows wheels
    bundle). ``built_with_ng`` is the zlib-ng Pillow was compiled against: off Linux that copy is bundled and
    is the writer; on Linux it is only the headers, and the host's libz.so.1 loaded at run time writes.
    """
    if runtime.endswith(ZLIB_NG_SUFFIX):
        return "zlib-ng"
    if built_with_ng and system != "Linux":
        return "zlib-ng"
    return "zlib"


def against_auditor() -> dict[str, str]:
    """This host's Python and PNG deflate library next to the auditor's (reports and warnings name both)."""
    return {"python": platform.python_version(), "auditor_python": AUDITOR_PYTHON,
            "png_deflate": str(png_deflate()), "auditor_png_deflate": f"zlib {AUDITOR_ZLIB} ({AUDITOR_OS})"}
