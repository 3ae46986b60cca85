"""What the benchmark and proof scripts share: inputs, percentiles, the tiny model, loaders that time themselves."""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

Loader = Callable[[Any, str], Any]
"""(torch dtype, device) -> a FluxKontextPipeline: the engine's ``loader``."""
ACTIVATIONS_GIB = 6.0
"""VRAM beyond the bf16 weights for a 1024x1024 edit: an estimate with margin (on CPU, full widths with one
block of each kind peaked 2.2 GiB above their weights; CUDA kernels and the caching allocator add some).
Math attention upcasts to fp32 and materialises 24x8704x8704 scores, ~14 GiB more: that combo may run out."""


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile by nearest rank (no interpolation: a figure that was measured)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def gradient_png(size: int) -> bytes:
    """A square RGB gradient, as a PNG."""
    from PIL import Image

    image = Image.new("RGB", (size, size))
    image.putdata([((x * 255) // size, (y * 255) // size, 128) for y in range(size) for x in range(size)])
    return _png(image)


def pattern_png(width: int = 96, height: int = 64) -> bytes:
    """A small RGB PNG with structure in both directions (no two rows or columns alike): an input for test edits."""
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([((x * 5) % 256, (y * 7) % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    return _png(image)


def photo_png(width: int, height: int) -> bytes:
    """An RGB PNG that costs about what a photo costs to decode and encode: seeded noise at half strength over
    a ramp, built with numpy (a megapixel in milliseconds, the same bytes on every machine)."""
    import numpy as np
    from PIL import Image

    ramp: Any = (np.arange(width, dtype=np.uint16) * 255 // max(1, width - 1)).reshape(1, width, 1)
    noise = np.frombuffer(hashlib.shake_256(f"photo {width}x{height}".encode()).digest(width * height * 3),
                          dtype=np.uint8).reshape(height, width, 3).astype(np.uint16)
    rows: Any = (np.arange(height, dtype=np.uint16) % 64).reshape(height, 1, 1)
    pixels = (((ramp + noise) // 2 + rows) & 255).astype(np.uint8)
    return _png(Image.fromarray(pixels))


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_model(directory: Optional[str] = None) -> str:
    """The model to measure: ``directory`` as it is when it holds a saved pipeline (a complete tiny build, fast or
    not, or any other model), else the tiny model built into it (or into a temp dir). A tiny build out of date
    (another transformers major, an older fast revision) is rebuilt as the same kind; nothing else is ever replaced
    (``build_tiny_kontext``)."""
    from tools.tiny_kontext import build_tiny_kontext, is_complete, recorded_build

    target = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny-kontext"
    recorded = recorded_build(target)
    if is_complete(target, fast=None) or (recorded is None and (target / "model_index.json").is_file()):
        return str(target)
    build_tiny_kontext(target, fast=bool(recorded and recorded.get("fast")))
    return str(target)


def timed(loader: Loader, seconds: list[float]) -> Loader:
    """``loader`` that appends its own duration to ``seconds`` (the build, apart from placement and warm-up)."""
    def load(dtype: Any, device: str) -> Any:
        started = time.perf_counter()
        pipe = loader(dtype, device)
        seconds.append(time.perf_counter() - started)
        return pipe

    return load


def synthetic_fit_problem(free_vram: Optional[int], weight_bytes: int,
                          subject: str = "--synthetic-full") -> Optional[str]:
    """Why the full-size synthetic model cannot run here (one line, ``subject`` first), or None when it fits.

    ``free_vram`` is None when this run has no CUDA GPU.
    """
    gib = 1024**3
    needed = weight_bytes / gib + ACTIVATIONS_GIB
    what = (f"{subject} builds FLUX.1-Kontext-dev at full size on a CUDA GPU in bf16 and needs about "
            f"{needed:.0f} GiB free there ({weight_bytes / gib:.1f} GiB of weights + {ACTIVATIONS_GIB:.0f} GiB for a "
            "1024x1024 edit)")
    if free_vram is None:
        return f"{what}; this run has no CUDA GPU (--synthetic-full --quick builds a reduced copy for CPU)"
    if free_vram < needed * gib:
        return f"{what}; this GPU has {free_vram / gib:.1f} GiB free"
    return None
