"""Recipe ``reference-v1``: the subnet's reference miner, byte for byte (what its audit re-runs).

Read from the reference miner's code (docs/subnet.md §8):

* Input: the bytes opened with PIL, **no EXIF transpose**; ``convert("RGB")`` only when the mode
  is not RGB (alpha is dropped, not composited); a long side over 1024 is scaled with
  ``ratio = 1024 / max(w, h)`` to ``(int(w * ratio), int(h * ratio))`` (truncated), LANCZOS.
* Seeding per job: Python ``random``, numpy, ``torch.manual_seed``, the CUDA seeds; noise from
  ``torch.Generator(device).manual_seed(seed)`` on the engine's own device (CUDA on a GPU).
  numpy's ``seed`` refuses values of 2**32 and more, which fails the reference's job; here numpy
  gets ``seed % 2**32`` instead, and the edit goes on: no number of the pipeline comes from numpy
  or Python's ``random``, so seeds below 2**32 give the reference's bytes and larger ones an image
  where the reference gives none.
* Torch: ``use_deterministic_algorithms(True, warn_only=True)``, cuDNN deterministic, benchmark
  off; TF32 switches left at torch's defaults, as the reference leaves them.
* Call: prompt, image, generator, guidance_scale, num_inference_steps, ``output_type="pil"``;
  **no width, height or max_area** (the request's are recorded and ignored), so the output is the
  pipeline's default size (1024x1024 for FLUX.1-Kontext-dev) whatever the input's aspect ratio.
* PNG: PIL's defaults (``image.save(..., "PNG")``: compress level 6, no optimize, no metadata),
  deflated by the host's zlib on Linux (the auditor's: Ubuntu 22.04's zlib 1.2.11); where zlib-ng
  writes it instead, the bytes differ and a stack warning says so.
* Weights in bf16 on CUDA (the engine's ``KONTEXT_DTYPE=auto``).
"""

from __future__ import annotations

import io
import platform
import random
from typing import Any

from PIL import Image

from kontext.engine import determinism, environment
from kontext.engine.devices import is_cuda
from kontext.engine.recipes.base import EditParams, open_image

MAX_INPUT_SIDE = 1024
NUMPY_SEED_RANGE = 2**32
AUDITOR_TORCH = "2.6."
AUDITOR_TRANSFORMERS = "4.52.4"
"""The audit miner's versions (constraints/reference.txt pins its whole stack for GPU hosts)."""
AUDITOR_PROFILE = "bfloat16/attn=native"
"""The audit miner's engine profile on its GPU: bf16 weights, native attention, no compile, fp8 or cache."""


class ReferenceV1:
    id = "reference-v1"
    honours_size = False

    def configure_torch(self) -> None:
        determinism.configure_torch_like_reference()

    def stack_warnings(self, device: str, profile: str) -> list[str]:
        """Where this process's versions, engine options or PNG deflate library are known to make other bytes
        than the auditor's."""
        import torch
        import transformers

        warnings: list[str] = []
        if is_cuda(device) and profile != AUDITOR_PROFILE:
            warnings.append(f"engine profile {profile}: the auditor runs {AUDITOR_PROFILE} (bf16, native attention, "
                            "no compile, fp8 or first-block cache); these options change the pixels, so every "
                            "audited job would fail: unset KONTEXT_DTYPE and the acceleration options")
        if not transformers.__version__.startswith("4."):
            warnings.append(
                f"transformers {transformers.__version__}: the auditor runs {AUDITOR_TRANSFORMERS}, whose slow CLIP "
                "tokenizer cleans prompts with ftfy (curly quotes, ligatures, mojibake) where transformers 5 does "
                "not, so such prompts get other token ids; install with -c constraints/reference.txt")
        if is_cuda(device) and not torch.__version__.startswith(AUDITOR_TORCH):
            warnings.append(f"torch {torch.__version__}: the auditor runs torch {AUDITOR_TORCH}0+cu124; other "
                            "kernels can give other pixels; install with -c constraints/reference.txt")
        return warnings + png_warnings(environment.png_deflate(), platform.python_version())

    def preprocess(self, image_bytes: bytes, *, max_pixels: int) -> Image.Image:
        image = open_image(image_bytes, max_pixels=max_pixels)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if max(image.size) > MAX_INPUT_SIDE:
            ratio = MAX_INPUT_SIDE / max(image.size)
            image = image.resize((int(image.width * ratio), int(image.height * ratio)), Image.Resampling.LANCZOS)
        return image

    def seed(self, seed: int, device: str) -> Any:
        import numpy as np
        import torch

        random.seed(seed)
        np.random.seed(seed % NUMPY_SEED_RANGE)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed(seed)
            torch.cuda.manual_seed_all(seed)
        return torch.Generator(device=device).manual_seed(seed)

    def pipeline_kwargs(self, image: Image.Image, params: EditParams, generator: Any) -> dict[str, Any]:
        return {
            "prompt": params.prompt,
            "image": image,
            "generator": generator,
            "guidance_scale": params.guidance_scale,
            "num_inference_steps": params.num_inference_steps,
            "output_type": "pil",
        }

    def encode_png(self, image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()


def png_warnings(deflate: environment.PngDeflate, python: str) -> list[str]:
    """Where this host's PNGs would differ from the auditor's for the same pixels: only where zlib-ng writes
    them (classic zlib 1.2.11, 1.2.13 and 1.3.1 write the same bytes)."""
    if deflate.library != "zlib-ng":
        return []
    return [f"PNG deflate {deflate} (Python {python}): the auditor's PNGs are written by zlib "
            f"{environment.AUDITOR_ZLIB} ({environment.AUDITOR_OS}, Python {environment.AUDITOR_PYTHON}); zlib-ng "
            "compresses the same pixels into other bytes, so every audited job would fail: run on Linux with a "
            "classic zlib as the host's libz.so.1 (1.2.11, 1.2.13 and 1.3.1 write the auditor's bytes)"]


RECIPE = ReferenceV1()
