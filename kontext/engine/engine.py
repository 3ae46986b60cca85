"""KontextEngine: loads FluxKontextPipeline and turns image bytes + parameters into PNG bytes.

It knows nothing of HTTP or jobs. An edit is three stages (kontext/engine/stages.py): ``prepare`` and
``encode`` run on the CPU in any thread, ``denoise`` holds the engine's device lock, so one pipeline call at a
time runs per engine, never batched: batching changes the numbers, and the audit compares bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Optional

from pathlib import Path

from kontext.engine import acceleration, selfcheck, stages
from kontext.engine.acceleration import EngineOptions
from kontext.engine.device_log import device_log
from kontext.engine.devices import check_available, is_cuda
from kontext.engine.determinism import pin_threads
from kontext.engine.recipes import DEFAULT_RECIPE, EditParams, Recipe, get_recipe
from kontext.engine.stages import DenoisedEdit, EditOutput, PreparedEdit, pixels_sha256

__all__ = ["DenoisedEdit", "EditOutput", "EngineConfig", "EngineState", "KontextEngine", "PreparedEdit",
           "pixels_sha256"]

if TYPE_CHECKING:
    from kontext.settings import Settings

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]
_LOAD_LOCK = threading.Lock()
"""Engines of one process load one at a time (weights, placement, warm-up, self-check): diffusers' and
transformers' lazy imports are not thread-safe (two threads saw ``cannot import name
'FluxKontextPipeline'``), the warm-up's first call imports more of them, and one copy at a time bounds
host RAM. Once loaded, engines edit in parallel."""
PipelineLoader = Callable[[Any, str], Any]
"""(torch dtype, device) -> a FluxKontextPipeline, used instead of ``from_pretrained`` (the bench's synthetic model)."""


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
    recipe: str = DEFAULT_RECIPE
    device: str = "auto"
    dtype: str = "auto"
    num_threads: int = 1
    local_files_only: bool = False
    options: EngineOptions = EngineOptions()
    golden_file: Optional[Path] = None
    """Where self-check hashes are recorded; None turns the warm-up self-check off."""

    @classmethod
    def from_settings(cls, settings: "Settings", device: Optional[str] = None) -> "EngineConfig":
        """``device``: one of KONTEXT_DEVICES (default KONTEXT_DEVICE, for a single engine)."""
        return cls(
            model_path=settings.kontext_model_path,
            recipe=settings.kontext_recipe,
            device=device or settings.kontext_device,
            dtype=settings.kontext_dtype,
            num_threads=settings.kontext_cpu_threads,
            local_files_only=settings.kontext_local_files_only,
            options=EngineOptions(
                attention_backend=settings.kontext_attention_backend,
                compile=settings.kontext_compile,
                memory_mode=settings.kontext_memory_mode,
                vram_budget_gb=settings.kontext_vram_budget_gb,
                fp8_layerwise=settings.kontext_fp8_layerwise,
                first_block_cache=settings.kontext_first_block_cache,
                strict=settings.kontext_strict_determinism,
            ),
            golden_file=settings.golden_file if settings.kontext_self_check else None,
        )


class KontextEngine:
    def __init__(self, config: EngineConfig, loader: Optional[PipelineLoader] = None) -> None:
        self.config = config
        self.recipe: Recipe = get_recipe(config.recipe)
        self.loader = loader
        self.state = EngineState.UNLOADED
        self.error: Optional[str] = None
        self.device = "unknown"
        self.dtype = "unknown"
        self.memory_mode = "unknown"
        self.profile = "unknown"
        self.self_check: Optional[selfcheck.SelfCheckResult] = None
        self.load_seconds: Optional[float] = None
        self.warnings: list[str] = []
        """Known differences from the stack the recipe is audited against (logged, and in /health)."""
        self.pipe: Any = None
        self.device_log = device_log()
        """(start, end) of each served pipeline call, for the busy fraction (``device_log.busy_fraction``)."""
        self._device_lock = threading.Lock()
        """Held for the recipe's torch switches, seeding and pipeline call: one pipeline call at a time."""

    def load(self) -> None:
        """Blocking: load, place, accelerate, warm up and self-check. Never raises: a failure
        (including a self-check drift) sets ``state=failed`` and ``error``."""
        self.state = EngineState.LOADING
        started = time.perf_counter()
        try:
            with _LOAD_LOCK:
                self._load()
        except Exception as exc:  # noqa: BLE001 - reported through state/error and /health
            self.error = f"{type(exc).__name__}: {exc}"[:1000]
            self.state = EngineState.FAILED
            log.error("engine not ready (%s): %s", self.config.model_path, self.error)
            return
        self.load_seconds = time.perf_counter() - started
        self.warnings = self.recipe.stack_warnings(self.device, self.profile)
        for warning in self.warnings:
            log.warning("%s: %s", self.recipe.id, warning)
        self.state = EngineState.READY
        log.info("loaded %s on %s (%s, %s, memory=%s) in %.1fs", self.config.model_path, self.device, self.dtype,
                 self.profile, self.memory_mode, self.load_seconds)

    def _load(self) -> None:
        import torch
        from diffusers import FluxKontextPipeline

        options = self.config.options
        options.validate()
        # 1. process-wide determinism (the recipe's switches), device and dtype
        self.recipe.configure_torch()
        pin_threads(self.config.num_threads)
        self.device = check_available(self.config.device, torch)
        torch_dtype = _resolve_dtype(self.config.dtype, self.device, torch)
        self.dtype = str(torch_dtype).removeprefix("torch.")
        self.profile = options.profile(self.dtype)
        # 2. weights, through the same from_pretrained path for the real and the tiny model (or an injected loader)
        if self.loader is not None:
            pipe = self.loader(torch_dtype, self.device)
        else:
            pipe = FluxKontextPipeline.from_pretrained(
                self.config.model_path, torch_dtype=torch_dtype, local_files_only=self.config.local_files_only
            )
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            getattr(pipe, name).eval()
        # 3. placement from the VRAM budget, then the number-changing options
        free = torch.cuda.mem_get_info(torch.device(self.device))[0] if is_cuda(self.device) else None
        self.memory_mode = acceleration.choose_memory_mode(options, self.device, acceleration.model_bytes(pipe),
                                                           free)
        acceleration.place(pipe, self.memory_mode, self.device)
        acceleration.apply(pipe, options, torch_dtype)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        # 4. warm-up (compiles, if compiling) and the golden-hash self-check
        prepared = self.prepare(selfcheck.self_check_image(), selfcheck.SELF_CHECK_PARAMS, max_pixels=1 << 24)
        with self._device_lock:
            warm = self.encode(self._denoise(prepared, None))
        if self.config.golden_file is not None:
            key, details = selfcheck.environment_key(recipe=self.recipe.id, profile=self.profile,
                                                     device_name=self.device_name(torch),
                                                     model_path=self.config.model_path)
            self.self_check = selfcheck.verify(self.config.golden_file, key, details, warm.sha256)
            if self.self_check.status == "drift":
                raise RuntimeError(
                    f"self-check drift: the fixed warm-up edit gave {warm.sha256[:16]}…, recorded "
                    f"{(self.self_check.expected or '')[:16]}… for this recipe, profile, hardware and library "
                    f"versions (key {key} in {self.config.golden_file}); outputs would fail the audit")

    def describe(self) -> dict[str, Any]:
        """What /health shows about the engine."""
        return {
            "state": self.state.value, "error": self.error, "device": self.device, "dtype": self.dtype,
            "profile": self.profile, "memory_mode": self.memory_mode, "recipe": self.recipe.id,
            "load_seconds": self.load_seconds, "self_check": self.self_check.as_dict() if self.self_check else None,
            "warnings": self.warnings,
        }

    def device_name(self, torch: Any) -> str:
        if is_cuda(self.device):
            return torch.cuda.get_device_name(torch.device(self.device))
        return f"cpu/{self.config.num_threads}-threads"

    def edit(self, image_bytes: bytes, params: EditParams, *, max_pixels: int,
             on_step: Optional[StepCallback] = None) -> EditOutput:
        """Blocking: the three stages in this thread. Raises ``ValueError`` for an unusable input image."""
        self._check_ready()
        return self.encode(self.denoise(self.prepare(image_bytes, params, max_pixels=max_pixels), on_step=on_step))

    def prepare(self, image_bytes: bytes, params: EditParams, *, max_pixels: int) -> PreparedEdit:
        """CPU only, any thread, no lock: decode and the recipe's preprocessing. ``ValueError`` for an unusable
        image."""
        started = time.perf_counter()
        image = self.recipe.preprocess(image_bytes, max_pixels=max_pixels)
        return PreparedEdit(image=image, params=params, recipe=self.recipe.id,
                            seconds=time.perf_counter() - started)

    def denoise(self, prepared: PreparedEdit, *, on_step: Optional[StepCallback] = None) -> DenoisedEdit:
        """Blocking, under the device lock: the recipe's torch switches, its seeding and the pipeline call,
        logged in ``device_log``."""
        with self._device_lock:
            self._check_ready()
            denoised = self._denoise(prepared, on_step)
            self.device_log.append(denoised.pipeline_call)
        return denoised

    def encode(self, denoised: DenoisedEdit) -> EditOutput:
        """CPU only, any thread, no lock: the recipe's PNG and both hashes."""
        if denoised.recipe != self.recipe.id:
            raise ValueError(f"denoised by recipe {denoised.recipe}, not this engine's {self.recipe.id}")
        return stages.encode(self.recipe, denoised)

    def _check_ready(self) -> None:
        if self.state is not EngineState.READY:
            raise RuntimeError(f"engine is {self.state.value}: {self.error or 'not loaded'}")

    def _denoise(self, prepared: PreparedEdit, on_step: Optional[StepCallback]) -> DenoisedEdit:
        """One pipeline call; the caller holds the device lock."""
        import torch

        started = time.perf_counter()
        recipe = self.recipe
        if prepared.recipe != recipe.id:
            raise ValueError(f"prepared by recipe {prepared.recipe}, not this engine's {recipe.id}")
        params = prepared.params
        # 1. the recipe's process-wide torch switches, again: another engine in this process (the
        #    conformance CLI holds one per recipe) may have set its own since this one loaded
        recipe.configure_torch()
        # 2. the recipe's seeding and call arguments, plus progress reporting
        generator = recipe.seed(params.seed, self.device)
        kwargs = recipe.pipeline_kwargs(prepared.image, params, generator)
        if on_step is not None:
            kwargs["callback_on_step_end"] = _step_reporter(on_step, params.num_inference_steps)
        # 3. run the pipeline
        with torch.inference_mode(), acceleration.call_context(self.pipe, self.config.options):
            call_started = time.perf_counter()
            result = self.pipe(**kwargs).images[0]
            call_ended = time.perf_counter()
        return DenoisedEdit(image=result, recipe=recipe.id, pipeline_call=(call_started, call_ended),
                            seconds=prepared.seconds + call_ended - started)


def _step_reporter(on_step: StepCallback, total: int) -> Callable[..., dict]:
    def callback(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        on_step(step_index + 1, total)
        return callback_kwargs

    return callback


def _resolve_dtype(dtype: str, device: str, torch: Any) -> Any:
    if dtype == "auto":
        return torch.bfloat16 if is_cuda(device) else torch.float32
    return getattr(torch, dtype)
