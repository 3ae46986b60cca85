"""What a recipe is: everything that decides an edit's output bytes, behind one id."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class EditParams:
    """One edit's parameters (defaults live in protocol/limits.py, not here)."""

    prompt: str
    seed: int
    guidance_scale: float
    num_inference_steps: int
    width: Optional[int]
    height: Optional[int]

    @classmethod
    def from_request(cls, request: Any) -> "EditParams":
        """The parameters of an edit request (any object with these attributes: the engine knows no wire type)."""
        return cls(prompt=request.prompt, seed=request.seed, guidance_scale=request.guidance_scale,
                   num_inference_steps=request.num_inference_steps, width=request.width, height=request.height)


class Recipe(Protocol):
    """A recipe decides every byte of an edit's output, from the input bytes to the PNG.

    Change any step and the id must change too: validators compare hashes made with the same
    recipe. Each recipe is one module in this package, registered in ``__init__``.
    """

    id: str
    honours_size: bool
    """Whether the request's ``width``/``height`` shape the output (otherwise recorded and ignored)."""

    def configure_torch(self) -> None:
        """Process-wide torch switches the recipe's numbers depend on (set at engine load and before every edit)."""

    def stack_warnings(self, device: str, profile: str) -> list[str]:
        """Versions in this process, or engine options (``profile``), known to give other numbers than the ones
        the recipe is checked against."""

    def preprocess(self, image_bytes: bytes, *, max_pixels: int) -> Image.Image:
        """Bytes -> the image the pipeline sees; ``ValueError`` naming what is wrong."""

    def seed(self, seed: int, device: str) -> Any:
        """Seed what the recipe seeds per job; return the generator the pipeline draws its noise from."""

    def pipeline_kwargs(self, image: Image.Image, params: EditParams, generator: Any) -> dict[str, Any]:
        """The exact keyword arguments of ``FluxKontextPipeline.__call__``."""

    def encode_png(self, image: Image.Image) -> bytes:
        """The output PNG's bytes."""


def open_image(image_bytes: bytes, *, max_pixels: int) -> Image.Image:
    """Open and decode, refusing decompression bombs from the header before any pixel is decoded.

    ``ValueError`` for bytes that are not a readable image or are over ``max_pixels``. Safe in any thread
    (an engine prepares one job's input while another denoises): no process-wide warning filter is touched.
    PIL only warns between its limit (``Image.MAX_IMAGE_PIXELS``) and twice that; this refuses there too.
    """
    try:
        image: Image.Image = Image.open(io.BytesIO(image_bytes))
        pixels = image.width * image.height
        if pixels > max_pixels:
            raise ValueError(f"image is {image.width}x{image.height}, over the limit of {max_pixels} pixels")
        if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{pixels} pixels")
        image.load()
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"image is over the limit of {max_pixels} pixels (a decompression bomb)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    return image
