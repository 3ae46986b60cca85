"""Options that need a newer diffusers are refused by name on older releases, and work on newer ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from kontext.engine import diffusers_features
from kontext.engine.acceleration import EngineOptions
from kontext.engine.engine import EngineConfig, EngineState, KontextEngine
from kontext.engine.recipes import EditParams
from tests.fakes import png_bytes


@pytest.mark.parametrize("version, refused", [("0.35.0", True), ("0.40.0", True), ("0.41.0.dev0", True),
                                              ("0.41.0", False), ("0.42.1", False)])
def test_require_compares_releases(version: str, refused: bool) -> None:
    minimum = diffusers_features.GROUP_OFFLOAD_WITHOUT_ACCELERATOR
    if refused:
        with pytest.raises(RuntimeError, match=rf"^group offload needs diffusers>={minimum} \(installed: {version}\)$"):
            diffusers_features.require(minimum, "group offload", version=version)
    else:
        diffusers_features.require(minimum, "group offload", version=version)


def test_cpu_group_offload_works_or_is_refused_by_name(tiny_model_dir: Path) -> None:
    """On this CPU-only host: an edit from diffusers 0.41 on, a load error naming 0.41 before it."""
    import torch

    if torch.accelerator.current_accelerator() is not None:
        pytest.skip("a GPU host offloads onto its GPU; this checks the CPU-only host")
    engine = KontextEngine(EngineConfig(model_path=str(tiny_model_dir), recipe="kontext-v1", device="cpu",
                                        local_files_only=True, options=EngineOptions(memory_mode="group_offload")))
    engine.load()
    if Version(diffusers_features.installed()) >= Version(diffusers_features.GROUP_OFFLOAD_WITHOUT_ACCELERATOR):
        assert engine.state is EngineState.READY, engine.error
        params = EditParams(prompt="p", seed=1, guidance_scale=2.5, num_inference_steps=2, width=64, height=64)
        assert engine.edit(png_bytes((48, 40), (1, 2, 3)), params, max_pixels=1 << 24).width == 64
    else:
        assert engine.state is EngineState.FAILED
        assert engine.error == (f"RuntimeError: KONTEXT_MEMORY_MODE=group_offload on a host without a GPU needs "
                                f"diffusers>=0.41.0 (installed: {diffusers_features.installed()})")
