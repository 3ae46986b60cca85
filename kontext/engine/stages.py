"""What passes between the three stages of one edit: the prepared input, the denoised image, the encoded output.

prepare (CPU: decode and the recipe's preprocessing) -> denoise (the device: the pipeline call, one at a time)
-> encode (CPU: the PNG and both hashes). Splitting them lets a caller prepare the next job and encode the
last one while the device denoises, without changing a byte: each stage does exactly what the recipe says.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from kontext.engine.recipes import EditParams, Recipe


@dataclass(frozen=True)
class PreparedEdit:
    """The recipe's input image, ready for the pipeline."""

    image: Any
    """The PIL image the pipeline sees."""
    params: EditParams
    recipe: str
    """The recipe that prepared it: only an engine of the same recipe may denoise it."""
    seconds: float
    """Time spent preparing."""


@dataclass(frozen=True)
class DenoisedEdit:
    """The pipeline's output image, not yet encoded."""

    image: Any
    """The PIL image the pipeline returned."""
    recipe: str
    pipeline_call: tuple[float, float]
    """``time.perf_counter()`` at the pipeline call's start and end (the device's busy interval)."""
    seconds: float
    """Time spent preparing and denoising (the device lock's wait excluded)."""


@dataclass(frozen=True)
class EditOutput:
    png: bytes
    sha256: str
    """Of the PNG bytes: what the subnet's audit compares."""
    pixels_sha256: str
    """Of the raw RGB pixels: equal here but not above means another PNG encoder, not other numbers."""
    width: int
    height: int
    recipe: str
    seconds: float
    """The edit's own time: preparing, denoising and encoding (waits for the device excluded)."""


def pixels_sha256(image: Any) -> str:
    """SHA256 of an image's raw RGB bytes (row-major, 8 bits a channel)."""
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def encode(recipe: Recipe, denoised: DenoisedEdit) -> EditOutput:
    """The recipe's PNG of the denoised image, its hashes, and the time the three stages took."""
    started = time.perf_counter()
    image = denoised.image
    png = recipe.encode_png(image)
    return EditOutput(png=png, sha256=hashlib.sha256(png).hexdigest(), pixels_sha256=pixels_sha256(image),
                      width=image.width, height=image.height, recipe=denoised.recipe,
                      seconds=denoised.seconds + time.perf_counter() - started)
