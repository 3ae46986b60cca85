"""KontextEngine: loads FluxKontextPipeline and turns image bytes + parameters into PNG bytes.

It knows nothing of HTTP or jobs. One edit at a time per engine (a lock), never batched:
batching changes the numbers, and the audit compares bytes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Optional

from kontext import recipe
from kontext.determinism import configure_torch
from kontext.recipe import EditParams

if TYPE_CHECKING:
    from kontext.settings import Settings

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]


class EngineState(str, Enum):
    UNLOADED = "unloaded"
    """Not loaded yet (lazy loading: the first job loads it)."""
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    """Loading failed; ``error`` says why. The process stays up to report it."""


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    device: str = "auto"
    dtype: str = "auto"
    num_threads: int = 1
    local_files_only: bool = False

    @classmethod
    def from_settings(cls, settings: "Settings") -> "EngineConfig":
        return cls(
            model_path=settings.kontext_model_path,
            device=settings.kontext_device,
            dtype=settings.kontext_dtype,
            num_threads=settings.kontext_cpu_threads,
            local_files_only=settings.kontext_local_files_only,
        )


@dataclass(frozen=True)
class EditOutput:
    png: bytes
    sha256: str
    width: int
    height: int
    recipe: str
    seconds: float


class KontextEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.state = EngineState.UNLOADED
        self.error: Optional[str] = None
        self.device = "unknown"
        self.dtype = "unknown"
        self.pipe: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Blocking. Never raises: a failure sets ``state=failed`` and ``error``."""
        self.state = EngineState.LOADING
        try:
            import torch
            from diffusers import FluxKontextPipeline

            configure_torch(self.config.num_threads)
            self.device = _resolve_device(self.config.device, torch)
            torch_dtype = _resolve_dtype(self.config.dtype, self.device, torch)
            self.dtype = str(torch_dtype).removeprefix("torch.")
            pipe = FluxKontextPipeline.from_pretrained(
                self.config.model_path, torch_dtype=torch_dtype, local_files_only=self.config.local_files_only
            )
            for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
                getattr(pipe, name).eval()
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self.pipe = pipe
        except Exception as exc:  # noqa: BLE001 - reported through state/error and /health
            self.error = f"{type(exc).__name__}: {exc}"[:1000]
            self.state = EngineState.FAILED
            log.error("could not load %s: %s", self.config.model_path, self.error)
            return
        self.state = EngineState.READY
        log.info("loaded %s on %s (%s)", self.config.model_path, self.device, self.dtype)

    def edit(self, image_bytes: bytes, params: EditParams, *, max_pixels: int,
             on_step: Optional[StepCallback] = None) -> EditOutput:
        """Blocking. Raises ``ValueError`` for an unusable input image."""
        import torch

        with self._lock:
            if self.state is not EngineState.READY:
                raise RuntimeError(f"engine is {self.state.value}: {self.error or 'not loaded'}")
            started = time.perf_counter()
            # 1. decode and normalise the input (the recipe's preprocessing)
            image = recipe.preprocess(image_bytes, max_pixels=max_pixels)
            # 2. the recipe's call arguments, plus progress reporting
            kwargs = recipe.pipeline_kwargs(image, params)
            if on_step is not None:
                kwargs["callback_on_step_end"] = _step_reporter(on_step, params.num_inference_steps)
            # 3. run the pipeline
            with torch.inference_mode():
                result = self.pipe(**kwargs).images[0]
            # 4. encode deterministically
            png = recipe.encode_png(result)
            return EditOutput(
                png=png,
                sha256=hashlib.sha256(png).hexdigest(),
                width=result.width,
                height=result.height,
                recipe=recipe.RECIPE_ID,
                seconds=time.perf_counter() - started,
            )


def _step_reporter(on_step: StepCallback, total: int) -> Callable[..., dict]:
    def callback(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        on_step(step_index + 1, total)
        return callback_kwargs

    return callback


def _resolve_device(device: str, torch: Any) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("KONTEXT_DEVICE=cuda but no CUDA device is available")
    return device


def _resolve_dtype(dtype: str, device: str, torch: Any) -> Any:
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)
