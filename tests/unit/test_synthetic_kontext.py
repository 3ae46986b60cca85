"""The synthetic Kontext builder: full-size shapes on the meta device, the quick copy for real, the engine's loader."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from PIL import Image

from kontext.engine.engine import EngineConfig, EngineState, KontextEngine
from kontext.engine.recipes import EditParams
from tests.fakes import png_bytes
from tools.synthetic_kontext import (FULL, FULL_PARAMETERS, QUICK, build_modules, build_synthetic_kontext,
                                     parameter_counts, weight_bytes)

PUBLISHED = {"transformer": 11.9e9, "text_encoder_2": 4.76e9, "text_encoder": 123e6, "vae": 84e6}
"""FLUX.1-Kontext-dev's components as published: transformer, T5-XXL encoder, CLIP-L text model, FLUX VAE."""


def test_full_size_matches_the_published_parameter_counts_without_memory() -> None:
    modules = build_modules(FULL, torch.bfloat16, "meta")
    counts = parameter_counts(FULL)
    assert set(counts) == set(PUBLISHED)
    for name, published in PUBLISHED.items():
        assert counts[name] == pytest.approx(published, rel=0.02), name
    tensors = [t for module in modules.values() for t in (*module.parameters(), *module.buffers())]
    assert {t.device.type for t in tensors} == {"meta"}
    assert {p.dtype for m in modules.values() for p in m.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # the build's default dtype does not leak
    assert weight_bytes(FULL, torch.bfloat16) == 2 * sum(counts.values())
    assert sum(counts.values()) == FULL_PARAMETERS  # what bench_gpu's early refusal counts with
    assert 31 * 1024**3 < weight_bytes(FULL, torch.bfloat16) < 32 * 1024**3


def test_full_size_has_the_real_configs() -> None:
    modules = build_modules(FULL, torch.bfloat16, "meta")
    transformer, t5, clip, vae = (modules[n] for n in ("transformer", "text_encoder_2", "text_encoder", "vae"))
    assert (transformer.config.num_layers, transformer.config.num_single_layers, transformer.config.in_channels,
            tuple(transformer.config.axes_dims_rope)) == (19, 38, 64, (16, 56, 56))
    assert (t5.config.d_model, t5.config.d_ff, t5.config.num_heads, t5.config.num_layers,
            t5.config.feed_forward_proj) == (4096, 10240, 64, 24, "gated-gelu")
    assert (clip.config.hidden_size, clip.config.num_hidden_layers, clip.config.hidden_act) == (768, 12, "quick_gelu")
    assert (tuple(vae.config.block_out_channels), vae.config.latent_channels, vae.config.shift_factor,
            vae.config.scaling_factor) == ((128, 256, 512, 512), 16, 0.1159, 0.3611)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    first, again, other = (build_modules(QUICK, torch.float32, "cpu", seed=s) for s in (0, 0, 1))
    for name in first:
        a, b, c = (m[name].state_dict() for m in (first, again, other))
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point()), name


def test_tokenizer_ids_must_have_embedding_rows() -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="exceed"):
        build_synthetic_kontext(replace(QUICK, t5_vocab=16), torch.float32, "cpu")


def test_engine_builds_through_the_injected_loader_and_edits() -> None:
    calls: list[tuple[Any, str]] = []

    def loader(dtype: Any, device: str) -> Any:
        calls.append((dtype, device))
        return build_synthetic_kontext(QUICK, dtype, device)

    engine = KontextEngine(EngineConfig(model_path="synthetic:quick", recipe="kontext-v1", device="cpu"), loader=loader)
    engine.load()
    assert engine.state is EngineState.READY, engine.error
    assert calls == [(torch.float32, "cpu")] and engine.memory_mode == "gpu"
    params = EditParams(prompt="add a red hat", seed=3, guidance_scale=2.5, num_inference_steps=2, width=64, height=64)
    out = engine.edit(png_bytes((48, 40), (30, 160, 90)), params, max_pixels=1 << 24)
    with Image.open(io.BytesIO(out.png)) as image:
        assert image.size == (64, 64) and len(image.getcolors(64 * 64) or []) > 100  # not NaNs turned black
