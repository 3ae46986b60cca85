"""GPU performance options: attention backend, regional compile, memory placement, fp8, block cache.

Each option is a setting. Those that change the numbers (attention backend, compile, fp8,
first-block cache, dtype) are part of the engine *profile*: the golden-hash self-check is keyed
by it, and a validator's trusted re-run must use the same profile to get the same bytes.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, ContextManager, Optional

from kontext.engine import diffusers_features
from kontext.engine.devices import is_cuda

log = logging.getLogger(__name__)

STRICT_ATTENTION_BACKENDS = frozenset({"native", "_native_math", "_native_flash", "_native_efficient", "flash"})
"""Backends whose forward pass is deterministic. Not cuDNN attention (``_native_cudnn``), whose
kernel choice may vary run to run, nor hub kernels (downloaded at run time)."""

MEMORY_MODES = ("auto", "gpu", "model_offload", "group_offload")
GIB = 1024**3


@dataclass(frozen=True)
class EngineOptions:
    attention_backend: str = "native"
    compile: bool = False
    memory_mode: str = "auto"
    vram_budget_gb: Optional[float] = None
    fp8_layerwise: bool = False
    first_block_cache: float = 0.0
    """Residual-difference threshold of diffusers' first-block cache; 0 turns it off."""
    strict: bool = True

    def validate(self) -> None:
        """Refuse combinations that cannot be reproduced byte for byte (strict mode)."""
        if self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"KONTEXT_MEMORY_MODE must be one of {', '.join(MEMORY_MODES)}")
        if self.first_block_cache < 0:
            raise ValueError("KONTEXT_FIRST_BLOCK_CACHE must be >= 0")
        if self.strict and self.attention_backend not in STRICT_ATTENTION_BACKENDS:
            raise ValueError(
                f"attention backend {self.attention_backend!r} is not allowed in strict determinism mode "
                f"(allowed: {', '.join(sorted(STRICT_ATTENTION_BACKENDS))}); set KONTEXT_STRICT_DETERMINISM=false "
                "to use it anyway")

    def profile(self, dtype: str) -> str:
        """The number-changing choices, as a short stable string."""
        parts = [dtype, f"attn={self.attention_backend}"]
        if self.compile:
            parts.append("compile=regional")
        if self.fp8_layerwise:
            parts.append("fp8=layerwise")
        if self.first_block_cache:
            parts.append(f"fbc={self.first_block_cache:g}")
        return "/".join(parts)


def model_bytes(pipe: Any) -> int:
    total = 0
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total


def choose_memory_mode(options: EngineOptions, device: str, weights: int, free_vram: Optional[int]) -> str:
    """Resolve ``auto``: everything on the GPU if it fits the budget with 30 % headroom for activations,
    else model offload (whole models move in and out), else group offload (block by block)."""
    if not is_cuda(device):
        return "gpu" if options.memory_mode == "auto" else options.memory_mode
    if options.memory_mode != "auto":
        return options.memory_mode
    budget = options.vram_budget_gb * GIB if options.vram_budget_gb else free_vram
    if budget is None or weights * 1.3 <= budget:
        return "gpu"
    transformer_share = 0.7  # the transformer is ~70 % of Kontext's weights and the largest model to onload
    return "model_offload" if weights * transformer_share * 1.3 <= budget else "group_offload"


def place(pipe: Any, mode: str, device: str) -> None:
    """Put the pipeline's weights where ``mode`` says (placement never changes the numbers)."""
    import torch

    if mode == "gpu":
        pipe.to(device)
    elif mode == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "group_offload":
        if torch.accelerator.current_accelerator() is None:
            diffusers_features.require(diffusers_features.GROUP_OFFLOAD_WITHOUT_ACCELERATOR,
                                       "KONTEXT_MEMORY_MODE=group_offload on a host without a GPU")
        onload = torch.device(device)
        for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            module = getattr(pipe, name)
            if hasattr(module, "enable_group_offload"):
                module.enable_group_offload(onload_device=onload, offload_device=torch.device("cpu"),
                                            offload_type="block_level", num_blocks_per_group=1)
            else:
                from diffusers.hooks import apply_group_offloading

                apply_group_offloading(module, onload_device=onload, offload_type="block_level",
                                       num_blocks_per_group=1)
    else:
        raise ValueError(f"unknown memory mode {mode!r}")


def apply(pipe: Any, options: EngineOptions, torch_dtype: Any) -> None:
    """Attention backend, fp8 storage, first-block cache and regional compile, in that order."""
    import torch

    transformer = pipe.transformer
    # Always explicit, "native" included: diffusers' set_attention_backend also sets a process-wide
    # default, and a model left without its own backend would silently inherit another engine's.
    transformer.set_attention_backend(options.attention_backend)
    if options.fp8_layerwise:
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch_dtype)
    if options.first_block_cache:
        from diffusers.hooks import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=options.first_block_cache))
    if options.compile:
        # Default mode only: "max-autotune" benchmarks kernels at start and may pick differently
        # run to run, which would change the bytes.
        transformer.compile_repeated_blocks(fullgraph=True)


def call_context(pipe: Any, options: EngineOptions) -> ContextManager[Any]:
    """FluxKontextPipeline opens no cache context of its own; the block cache needs one."""
    if options.first_block_cache:
        return pipe.transformer.cache_context("cond")
    return contextlib.nullcontext()
