"""Recipe ``kontext-v1``: the portable recipe (identical noise on CPU and GPU, the input's aspect kept).

For deployments outside the subnet's audit, which checks ``reference-v1``. Resolution rule,
diffusers' own arithmetic:

* The input is EXIF-rotated, made RGB (transparency composited on white) and, if its long side
  is over 1024, scaled down with LANCZOS so the long side is 1024 (sides rounded).
* Output size: with ``width``/``height`` in the request, exactly that (each a multiple of 16;
  passed with ``max_area = width * height``). Without them, the output keeps the input's aspect
  ratio at about one megapixel (``max_area = 1024**2``): each side is
  ``round(sqrt(max_area * aspect))`` floored to a multiple of 16. So a 512x512 input gives a
  1024x1024 output, and 768x512 gives 1248x832: Kontext works best at about 1 MP, its training size.
* The conditioning image is resized by the pipeline to the preferred Kontext resolution
  closest to its aspect ratio (``_auto_resize=True``, diffusers' default).
* Noise comes from ``torch.Generator("cpu").manual_seed(seed)``, whatever the engine's device.
* Torch: deterministic algorithms (an op without one fails the job), TF32 off everywhere.
* PNG: no metadata, compression level 6, no optimize.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageOps

from kontext.engine import determinism
from kontext.engine.recipes.base import EditParams, open_image

MAX_INPUT_SIDE = 1024
DEFAULT_MAX_AREA = 1024**2
SIZE_MULTIPLE = 16
PNG_COMPRESS_LEVEL = 6


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


class KontextV1:
    id = "kontext-v1"
    honours_size = True

    def configure_torch(self) -> None:
        determinism.configure_torch_strict()

    def stack_warnings(self, device: str, profile: str) -> list[str]:
        return []  # audited against itself: only the self-check's recorded hash matters

    def preprocess(self, image_bytes: bytes, *, max_pixels: int) -> Image.Image:
        image = _to_rgb(ImageOps.exif_transpose(open_image(image_bytes, max_pixels=max_pixels)))
        long_side = max(image.size)
        if long_side > MAX_INPUT_SIDE:
            scale = MAX_INPUT_SIDE / long_side
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        return image

    def seed(self, seed: int, device: str) -> Any:
        import torch

        return torch.Generator("cpu").manual_seed(seed)  # the FLUX convention: the same noise on every device

    def pipeline_kwargs(self, image: Image.Image, params: EditParams, generator: Any) -> dict[str, Any]:
        width, height, max_area = _size_and_area(image.size, params)
        return {
            "image": image,
            "prompt": params.prompt,
            "guidance_scale": params.guidance_scale,
            "num_inference_steps": params.num_inference_steps,
            "width": width,
            "height": height,
            "max_area": max_area,
            "generator": generator,
            "output_type": "pil",
            "_auto_resize": True,
        }

    def encode_png(self, image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()


RECIPE = KontextV1()
