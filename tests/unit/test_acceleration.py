"""Engine options on CPU (all but the CUDA kernels), and the golden-hash self-check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.version import Version

from kontext.engine import diffusers_features
from kontext.engine.acceleration import GIB, EngineOptions, choose_memory_mode
from kontext.engine.engine import EngineConfig, EngineState, KontextEngine
from kontext.engine.recipes import EditParams
from tests.fakes import png_bytes

IMAGE = png_bytes((48, 40), (30, 160, 90))
PARAMS = EditParams(prompt="add a red hat", seed=3, guidance_scale=2.5, num_inference_steps=3, width=64, height=64)
DIFFUSERS = Version(diffusers_features.installed())
CPU_GROUP_OFFLOAD = pytest.mark.skipif(
    DIFFUSERS < Version(diffusers_features.GROUP_OFFLOAD_WITHOUT_ACCELERATOR),
    reason="group offload on a host without a GPU needs diffusers>=0.41 (test_diffusers_features checks the refusal)")


def test_strict_mode_refuses_nondeterministic_attention() -> None:
    with pytest.raises(ValueError, match="not allowed in strict"):
        EngineOptions(attention_backend="_native_cudnn").validate()
    EngineOptions(attention_backend="_native_cudnn", strict=False).validate()
    EngineOptions(attention_backend="_native_math").validate()
    with pytest.raises(ValueError, match="MEMORY_MODE"):
        EngineOptions(memory_mode="swap").validate()


def test_profile_names_every_number_changing_option() -> None:
    assert EngineOptions().profile("bfloat16") == "bfloat16/attn=native"
    options = EngineOptions(attention_backend="flash", compile=True, fp8_layerwise=True, first_block_cache=0.08,
                            memory_mode="group_offload")
    assert options.profile("bfloat16") == "bfloat16/attn=flash/compile=regional/fp8=layerwise/fbc=0.08"


@pytest.mark.parametrize("budget, free, expected", [
    (80, None, "gpu"),             # 33 GB of weights fit an 80 GB H100 with headroom
    (40, None, "model_offload"),   # sharing the card with FLUX.1-dev: the transformer fits, not all
    (16, None, "group_offload"),   # a small budget: block by block
    (None, 80 * GIB, "gpu"),       # no budget: the free VRAM decides
])
def test_memory_mode_from_the_vram_budget(budget, free, expected) -> None:
    options = EngineOptions(vram_budget_gb=budget)
    assert choose_memory_mode(options, "cuda", weights=33 * GIB, free_vram=free) == expected
    assert choose_memory_mode(options, "cpu", weights=33 * GIB, free_vram=None) == "gpu"  # CPU: in place


def _engine(model: Path, golden: Path | None = None, **options: object) -> KontextEngine:
    engine = KontextEngine(EngineConfig(model_path=str(model), recipe="kontext-v1", device="cpu",  # 64x64: fast
                                        local_files_only=True, options=EngineOptions(**options),  # type: ignore[arg-type]
                                        golden_file=golden))
    engine.load()
    assert engine.state is EngineState.READY, engine.error
    return engine


@pytest.mark.parametrize("options", [
    {"attention_backend": "_native_math"},
    {"first_block_cache": 0.05},
    {"fp8_layerwise": True},
    pytest.param({"memory_mode": "group_offload"}, marks=CPU_GROUP_OFFLOAD),
])
def test_each_option_runs_on_cpu_and_stays_repeatable(tiny_model_dir: Path, options: dict) -> None:
    engine = _engine(tiny_model_dir, **options)
    first = engine.edit(IMAGE, PARAMS, max_pixels=1 << 24)
    second = engine.edit(IMAGE, PARAMS, max_pixels=1 << 24)
    assert first.sha256 == second.sha256
    assert engine.describe()["memory_mode"] == options.get("memory_mode", "gpu")


@CPU_GROUP_OFFLOAD
def test_placement_does_not_change_the_numbers(tiny_model_dir: Path) -> None:
    in_place = _engine(tiny_model_dir).edit(IMAGE, PARAMS, max_pixels=1 << 24)
    offloaded = _engine(tiny_model_dir, memory_mode="group_offload").edit(IMAGE, PARAMS, max_pixels=1 << 24)
    assert in_place.sha256 == offloaded.sha256


def test_self_check_records_then_matches_then_refuses_drift(tiny_model_dir: Path, tmp_path: Path) -> None:
    golden = tmp_path / "golden.json"
    first = _engine(tiny_model_dir, golden)
    assert first.self_check is not None and first.self_check.status == "recorded"
    recorded = json.loads(golden.read_text())
    assert list(recorded.values())[0]["recipe"] == "kontext-v1"
    second = _engine(tiny_model_dir, golden)
    assert second.self_check.status == "match" and second.self_check.actual == first.self_check.actual

    key = first.self_check.key
    recorded[key]["sha256"] = "0" * 64  # as if a driver or library update changed the numbers
    golden.write_text(json.dumps(recorded))
    drifted = KontextEngine(EngineConfig(model_path=str(tiny_model_dir), recipe="kontext-v1", device="cpu",
                                         local_files_only=True, golden_file=golden))
    drifted.load()
    assert drifted.state is EngineState.FAILED and "self-check drift" in (drifted.error or "")
    assert drifted.describe()["self_check"]["status"] == "drift"


def test_an_engine_keeps_its_attention_backend_whatever_another_engine_set(tiny_model_dir: Path) -> None:
    """diffusers' set_attention_backend also sets a process-wide default; each engine pins its own."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    native_before = _engine(tiny_model_dir).edit(IMAGE, PARAMS, max_pixels=1 << 24)
    math = _engine(tiny_model_dir, attention_backend="_native_math")
    math.edit(IMAGE, PARAMS, max_pixels=1 << 24)
    # From diffusers 0.37 on, set_attention_backend also sets the process-wide default: it leaks.
    leaked = "_native_math" if DIFFUSERS >= Version("0.37.0") else "native"
    assert str(_AttentionBackendRegistry._active_backend.value) == leaked
    native_after = _engine(tiny_model_dir)
    backends = {getattr(m.processor, "_attention_backend", None) for m in native_after.pipe.transformer.modules()
                if hasattr(m, "processor")}
    assert {str(getattr(b, "value", b)) for b in backends} == {"native"}
    assert native_after.edit(IMAGE, PARAMS, max_pixels=1 << 24).sha256 == native_before.sha256


@pytest.mark.slow
def test_regional_compile_warms_up_at_load_and_stays_repeatable(tiny_model_dir: Path) -> None:
    """compile_repeated_blocks(fullgraph=True), compiled by the warm-up edit during load (inductor on CPU): an
    edit of the warm-up's shapes compiles nothing more. (Another input shape would compile again, ~30 s here.)"""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    engine = _engine(tiny_model_dir, compile=True)
    assert "compile=regional" in engine.profile and engine.load_seconds is not None
    compiled_at_load = counters["stats"]["unique_graphs"]
    assert compiled_at_load > before
    image = png_bytes((64, 64), (30, 160, 90))  # the self-check image's size and PARAMS' output: its shapes
    first = engine.edit(image, PARAMS, max_pixels=1 << 24)
    assert engine.edit(image, PARAMS, max_pixels=1 << 24).sha256 == first.sha256
    assert counters["stats"]["unique_graphs"] == compiled_at_load


def test_each_engine_edits_under_its_own_recipes_torch_switches(tiny_model_dir: Path) -> None:
    """Two recipes in one process (the conformance CLI): the engine loaded last must not set the switches
    the other one's edits run under."""
    import torch

    strict = _engine(tiny_model_dir)  # kontext-v1: deterministic algorithms, errors
    like_reference = KontextEngine(EngineConfig(model_path=str(tiny_model_dir), recipe="reference-v1", device="cpu",
                                                local_files_only=True))
    like_reference.load()  # reference-v1: deterministic algorithms, warnings only
    seen: list[bool] = []

    def on_step(step: int, total: int) -> None:
        seen.append(torch.is_deterministic_algorithms_warn_only_enabled())

    strict.edit(IMAGE, PARAMS, max_pixels=1 << 24, on_step=on_step)
    assert seen and not any(seen)
    seen.clear()
    small = EditParams(prompt="p", seed=1, guidance_scale=2.5, num_inference_steps=1, width=64, height=64)
    like_reference.edit(png_bytes((16, 16), (1, 2, 3)), small, max_pixels=1 << 24, on_step=on_step)
    assert seen and all(seen)
