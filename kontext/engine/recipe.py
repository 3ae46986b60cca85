"""The versioned recipe: input preprocessing, pipeline arguments and PNG encoding.

Everything that decides the output bytes lives here, under one id. Change any of it and
``RECIPE_ID`` must change too, because validators compare hashes made with the same recipe.

Resolution rule (kontext-v1), diffusers' own arithmetic:

* The input is EXIF-rotated, made RGB (transparency composited on white) and, if its long side
  is over 1024, scaled down with LANCZOS so the long side is 1024.
* Output size: with ``width``/``height`` in the request, exactly that (each a multiple of 16;
  passed with ``max_area = width * height``). Without them, the output keeps the input's aspect
  ratio at about one megapixel (``max_area = 1024**2``): each side is
  ``round(sqrt(max_area * aspect))`` floored to a multiple of 16. So a 512x512 input gives a
  1024x1024 output, and 768x512 gives 1248x832: Kontext works best at about 1 MP, its training size.
* The conditioning image is resized by the pipeline to the preferred Kontext resolution
  closest to its aspect ratio (``_auto_resize=True``, diffusers' default).
* Noise comes from ``torch.Generator("cpu").manual_seed(seed)``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from PIL import Image, ImageOps, UnidentifiedImageError

from kontext.engine.determinism import seeded_generator

RECIPE_ID = "kontext-v1"
MAX_INPUT_SIDE = 1024
DEFAULT_MAX_AREA = 1024**2
SIZE_MULTIPLE = 16
PNG_COMPRESS_LEVEL = 6


@dataclass(frozen=True)
class EditParams:
    """One edit's parameters (defaults live in protocol/limits.py, not here)."""

    prompt: str
    seed: int
    guidance_scale: float
    num_inference_steps: int
    width: Optional[int]
    height: Optional[int]


def preprocess(image_bytes: bytes, *, max_pixels: int) -> Image.Image:
    """Bytes -> the RGB image the pipeline sees. Raises ``ValueError`` naming what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(image_bytes))
            if image.width * image.height > max_pixels:
                raise ValueError(f"image is {image.width}x{image.height}, over the limit of {max_pixels} pixels")
            image.load()
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    image = ImageOps.exif_transpose(image)
    image = _to_rgb(image)
    long_side = max(image.size)
    if long_side > MAX_INPUT_SIDE:
        scale = MAX_INPUT_SIDE / long_side
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _size_and_area(input_size: tuple[int, int], params: EditParams) -> tuple[int, int, int]:
    if params.width is not None and params.height is not None:
        return params.width, params.height, params.width * params.height
    return input_size[0], input_size[1], DEFAULT_MAX_AREA


def output_size(input_size: tuple[int, int], params: EditParams) -> tuple[int, int]:
    """The (width, height) the pipeline will produce for a preprocessed input of ``input_size``."""
    width, height, max_area = _size_and_area(input_size, params)
    aspect = width / height
    out_w = round((max_area * aspect) ** 0.5) // SIZE_MULTIPLE * SIZE_MULTIPLE
    out_h = round((max_area / aspect) ** 0.5) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return out_w, out_h


def pipeline_kwargs(image: Image.Image, params: EditParams) -> dict[str, Any]:
    """The exact keyword arguments of ``FluxKontextPipeline.__call__`` for this recipe."""
    width, height, max_area = _size_and_area(image.size, params)
    return {
        "image": image,
        "prompt": params.prompt,
        "guidance_scale": params.guidance_scale,
        "num_inference_steps": params.num_inference_steps,
        "width": width,
        "height": height,
        "max_area": max_area,
        "generator": seeded_generator(params.seed),
        "output_type": "pil",
        "_auto_resize": True,
    }


def encode_png(image: Image.Image) -> bytes:
    """Byte-deterministic PNG: no metadata, no timestamps, a fixed compression level."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
