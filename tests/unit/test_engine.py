"""KontextEngine on the tiny real FluxKontextPipeline, loaded through from_pretrained."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from kontext.engine.engine import EngineConfig, EngineState, KontextEngine
from kontext.engine.recipes import EditParams
from kontext.engine.recipes.kontext_v1 import output_size
from tests.fakes import png_bytes

MAX_PIXELS = 4096 * 4096


def _params(**change: object) -> EditParams:
    values = dict(prompt="add a red hat", seed=1, guidance_scale=2.5, num_inference_steps=2, width=64, height=64)
    values.update(change)
    return EditParams(**values)  # type: ignore[arg-type]


def _engine(model_dir: Path, recipe: str) -> KontextEngine:
    engine = KontextEngine(EngineConfig(model_path=str(model_dir), recipe=recipe, device="cpu", local_files_only=True))
    engine.load()
    assert engine.state is EngineState.READY, engine.error
    return engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> KontextEngine:
    """kontext-v1: honours width/height, so these tests stay small (64x64)."""
    return _engine(tiny_model_dir, "kontext-v1")


@pytest.fixture(scope="module")
def reference_engine(tiny_model_dir: Path) -> KontextEngine:
    return _engine(tiny_model_dir, "reference-v1")


IMAGE = png_bytes((48, 40), (30, 160, 90))


def test_same_params_same_bytes_across_engine_instances(engine: KontextEngine, tiny_model_dir: Path) -> None:
    other = _engine(tiny_model_dir, "kontext-v1")
    first = engine.edit(IMAGE, _params(), max_pixels=MAX_PIXELS)
    second = other.edit(IMAGE, _params(), max_pixels=MAX_PIXELS)
    assert first.png == second.png and first.sha256 == hashlib.sha256(first.png).hexdigest()
    assert first.recipe == "kontext-v1" and engine.device == "cpu" and engine.dtype == "float32"
    with Image.open(io.BytesIO(first.png)) as image:
        assert first.pixels_sha256 == hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def test_reference_v1_is_the_default_and_always_makes_the_pipelines_default_size(
        reference_engine: KontextEngine) -> None:
    assert EngineConfig(model_path="x").recipe == "reference-v1"
    with_size = reference_engine.edit(IMAGE, _params(width=96, height=64), max_pixels=MAX_PIXELS)
    without = reference_engine.edit(IMAGE, _params(width=None, height=None), max_pixels=MAX_PIXELS)
    assert with_size.recipe == "reference-v1" and (with_size.width, with_size.height) == (1024, 1024)
    assert with_size.png == without.png  # width/height are recorded and ignored
    assert reference_engine.describe()["recipe"] == "reference-v1"
    import transformers

    warned = any("constraints/reference.txt" in warning for warning in reference_engine.describe()["warnings"])
    assert warned == (not transformers.__version__.startswith("4."))  # the auditor tokenizes with transformers 4


@pytest.mark.parametrize("change", [{"seed": 2}, {"prompt": "make it blue"}, {"guidance_scale": 6.0}])
def test_any_change_changes_the_bytes(engine: KontextEngine, change: dict) -> None:
    assert engine.edit(IMAGE, _params(), max_pixels=MAX_PIXELS).sha256 != \
        engine.edit(IMAGE, _params(**change), max_pixels=MAX_PIXELS).sha256


def test_output_size_follows_the_rule_and_steps_are_reported(engine: KontextEngine) -> None:
    steps: list[tuple[int, int]] = []
    params = _params(width=96, height=64, num_inference_steps=3)
    out = engine.edit(IMAGE, params, max_pixels=MAX_PIXELS, on_step=lambda k, n: steps.append((k, n)))
    assert (out.width, out.height) == output_size((48, 40), params) == (96, 64)
    with Image.open(io.BytesIO(out.png)) as image:
        assert image.size == (96, 64) and image.format == "PNG"
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_bad_bytes_raise_value_error(engine: KontextEngine) -> None:
    with pytest.raises(ValueError, match="not a readable image"):
        engine.edit(b"garbage", _params(), max_pixels=MAX_PIXELS)


def test_load_failure_is_a_state_not_an_exception(tmp_path: Path) -> None:
    engine = KontextEngine(EngineConfig(model_path=str(tmp_path / "missing"), device="cpu", local_files_only=True))
    engine.load()
    assert engine.state is EngineState.FAILED and engine.error
    with pytest.raises(RuntimeError, match="failed"):
        engine.edit(IMAGE, _params(), max_pixels=MAX_PIXELS)


_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from kontext.engine.engine import EngineConfig, KontextEngine
from kontext.engine.recipes import EditParams
from tests.fakes import png_bytes
engine = KontextEngine(EngineConfig(model_path={model!r}, recipe="kontext-v1", device="cpu", local_files_only=True))
engine.load()
out = engine.edit(png_bytes((48, 40), (30, 160, 90)), EditParams("add a red hat", 7, 2.5, 2, 64, 64),
                  max_pixels=1 << 24)
print(out.sha256)
"""


def test_a_fresh_process_gives_the_same_sha256(engine: KontextEngine, tiny_model_dir: Path) -> None:
    """The product guarantee: a fresh process reproduces the bytes this one made, exactly."""
    code = _CHILD.format(root=str(Path(__file__).resolve().parents[2]), model=str(tiny_model_dir))
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": "0"}).stdout.split()[-1]
    here = engine.edit(png_bytes((48, 40), (30, 160, 90)), EditParams("add a red hat", 7, 2.5, 2, 64, 64),
                       max_pixels=1 << 24)
    assert len(fresh) == 64 and fresh == here.sha256


class _TrackedLock:
    """The engine's device lock, counting who holds it: never two at once, one hold per pipeline call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self.holders = 0
        self.most_holders = 0
        self.holds = 0

    def __enter__(self) -> "_TrackedLock":
        self._lock.acquire()
        with self._count:
            self.holders += 1
            self.holds += 1
            self.most_holders = max(self.most_holders, self.holders)
        time.sleep(0.01)  # widen the window in which a second holder would show
        return self

    def __exit__(self, *exc: object) -> None:
        with self._count:
            self.holders -= 1
        self._lock.release()


def test_two_threads_through_the_stages_give_edits_bytes_one_pipeline_call_at_a_time(
        engine: KontextEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare and encode run in any thread; denoise holds the device lock, so two threads' pipeline calls
    never overlap, and every PNG is the one ``edit()`` makes for the same request."""
    jobs = [[_params(seed=seed, prompt=prompt) for seed in (11, 12)] for prompt in ("add a hat", "make it blue")]
    expected = {(p.prompt, p.seed): engine.edit(IMAGE, p, max_pixels=MAX_PIXELS).png for job in jobs for p in job}
    lock = _TrackedLock()
    monkeypatch.setattr(engine, "_device_lock", lock)
    logged_before = len(engine.device_log)
    both_prepared = threading.Barrier(2)
    got: dict[tuple[str, int], bytes] = {}

    def drive(params: list[EditParams]) -> None:
        for p in params:
            prepared = engine.prepare(IMAGE, p, max_pixels=MAX_PIXELS)
            both_prepared.wait(timeout=60)  # both threads reach the device at once
            got[(p.prompt, p.seed)] = engine.encode(engine.denoise(prepared)).png

    threads = [threading.Thread(target=drive, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert got == expected
    assert lock.holds == 4 and lock.most_holders == 1
    calls = sorted(list(engine.device_log)[logged_before:])
    assert len(calls) == 4
    assert all(end <= next_start for (_, end), (next_start, _) in zip(calls, calls[1:]))  # no overlap


def test_busy_fraction_of_the_logged_pipeline_calls(engine: KontextEngine) -> None:
    from kontext.engine.device_log import busy_fraction

    assert busy_fraction([(10.0, 11.0), (12.0, 13.0)]) == pytest.approx(2 / 3)
    assert busy_fraction([(1.0, 2.0)]) == 1.0 and busy_fraction([]) == 0.0
    denoised = engine.denoise(engine.prepare(IMAGE, _params(), max_pixels=MAX_PIXELS))
    assert engine.device_log[-1] == denoised.pipeline_call and denoised.pipeline_call[0] < denoised.pipeline_call[1]


def test_a_stage_refuses_another_recipes_edit(engine: KontextEngine, reference_engine: KontextEngine) -> None:
    prepared = reference_engine.prepare(IMAGE, _params(), max_pixels=MAX_PIXELS)
    with pytest.raises(ValueError, match="prepared by recipe reference-v1"):
        engine.denoise(prepared)
    with pytest.raises(ValueError, match="not a readable image"):
        engine.prepare(b"garbage", _params(), max_pixels=MAX_PIXELS)
