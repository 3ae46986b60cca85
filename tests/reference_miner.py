"""The subnet reference miner's edit, as read from its public code (docs/subnet.md §8), written
independently of kontext/ so a test can compare the miner's bytes with it.

Nothing here imports the miner's engine or recipes: if both got the recipe wrong the same way, this
file would have to be wrong in the same way too, written separately from the description.
"""

from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


class ReferenceKontextEditor:
    """Load once, then per job: preprocess, seed, call the pipeline, save the PNG with PIL's defaults."""

    def __init__(self, model_path: str, *, device: str, dtype: Any) -> None:
        from diffusers import FluxKontextPipeline

        self.device = device
        self.pipeline = FluxKontextPipeline.from_pretrained(model_path, torch_dtype=dtype,
                                                            use_safetensors=True).to(device)
        self.pipeline.set_progress_bar_config(disable=True)

    @classmethod
    def around(cls, pipeline: Any, *, device: str) -> "ReferenceKontextEditor":
        """Around a pipeline built in this process (the GPU proof's full-size model has no files to load)."""
        editor = cls.__new__(cls)
        editor.device = device
        editor.pipeline = pipeline
        return editor

    @staticmethod
    def preprocess(image: Image.Image) -> Image.Image:
        if image.mode != "RGB":
            image = image.convert("RGB")
        max_size = 1024
        if max(image.size) > max_size:
            ratio = max_size / max(image.size)
            image = image.resize((int(image.width * ratio), int(image.height * ratio)), Image.Resampling.LANCZOS)
        return image

    def set_deterministic_mode(self, seed: int) -> torch.Generator:
        random.seed(seed)
        np.random.seed(seed % 2**32)  # the reference's own call raises past 2**32; numpy feeds no number here
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed(seed)
            torch.cuda.manual_seed_all(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        return torch.Generator(device=self.device).manual_seed(seed)

    def edit_png(self, image_bytes: bytes, *, prompt: str, seed: int, guidance_scale: float,
                 num_inference_steps: int) -> bytes:
        image = self.preprocess(Image.open(io.BytesIO(image_bytes)))
        generator = self.set_deterministic_mode(seed)
        with torch.inference_mode():
            result = self.pipeline(prompt=prompt, image=image, generator=generator, guidance_scale=guidance_scale,
                                   num_inference_steps=num_inference_steps, output_type="pil").images[0]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "edit.png"
            result.save(path)
            return path.read_bytes()
