"""Byte for byte with the reference miner (CPU half): the golden cases replay through the real conformance
command, and the reference miner's own recipe, written independently (tests/reference_miner.py), hands the
pipeline the same arguments as the miner for every golden request and gives the same PNG bytes as that replay
where it runs whole. Together: the miner's default output equals the reference's.

On the CPU the bytes depend on the processor's float kernels (torch, MKL and oneDNN dispatch on its
vendor and vector extensions), so the golden files are recorded per CPU kind (``tiny-cpu-*.jsonl``, each
naming its ``cpu_vendor`` and ``cpu_kernels``). On a CPU kind none was recorded on, the golden check says
so and skips; the reference comparison runs everywhere, against this machine's own replay.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from kontext.conformance import read_cases
from tests.e2e.servers import REPO_ROOT
from tests.in_process import process_state_restored

pytestmark = pytest.mark.e2e

GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("tiny-cpu-*.jsonl"))
CASES = read_cases(GOLDEN_FILES[0])  # every golden file holds the same requests; only the hashes differ
OUTCOME = re.compile(r"^(MATCH|MISMATCH).*? (?P<name>\S+) \[(?P<recipe>[^\]]+)\] \d+x\d+ "
                     r"png=(?P<png>[0-9a-f]{64}) pixels=(?P<pixels>[0-9a-f]{64})$")


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def _conformance(cases: Path, model: Path) -> Run:
    """``kontext-client conformance`` as the operator runs it, in this process (a start costs more than the small
    runs here): its exit code and output. Its start settles the hash seed and logging; both are put back after."""
    from kontext.client.cli import main

    argv = ["conformance", str(cases), "--model", str(model), "--device", "cpu", "--env-file", os.devnull]
    out, err = io.StringIO(), io.StringIO()
    with process_state_restored(), pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        for name, value in (("PYTHONHASHSEED", "0"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
            patch.setenv(name, value)
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Run(code, out.getvalue(), err.getvalue())


def golden_for_this_cpu() -> Optional[Path]:
    """The golden file recorded on this CPU kind, if any."""
    from kontext.engine.environment import cpu_kernels

    here = cpu_kernels()
    for path in GOLDEN_FILES:
        recorded = read_cases(path).environment
        if all(recorded.get(key) == value for key, value in here.items()):
            return path
    return None


@dataclass(frozen=True)
class Replay:
    """One conformance run over the golden requests on this machine."""
    golden: Optional[Path]
    result: Run
    png: dict[str, str]
    pixels: dict[str, str]


@pytest.fixture(scope="module")
def replay(golden_model_dir: Path) -> Replay:
    golden = golden_for_this_cpu()
    result = _conformance(golden or GOLDEN_FILES[0], golden_model_dir)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    found = [match for line in result.stdout.splitlines() if (match := OUTCOME.match(line))]
    assert len(found) == len(CASES.cases), result.stdout
    return Replay(golden, result, {m["name"]: m["png"] for m in found}, {m["name"]: m["pixels"] for m in found})


def test_golden_cases_conform_for_both_recipes(replay: Replay) -> None:
    """Any change that moves a byte of either recipe fails here, with the environment diff in the output."""
    if replay.golden is None:
        from kontext.engine.environment import cpu_kernels

        pytest.skip(f"no golden cases recorded on this CPU kind ({cpu_kernels()}): its float kernels give other "
                    f"bytes; record them with `kontext-client conformance {GOLDEN_FILES[0].relative_to(REPO_ROOT)} "
                    f"--device cpu --model <tiny> --record tests/golden/tiny-cpu-<vendor>-<kernels>.jsonl`")
    assert replay.result.returncode == 0, replay.result.stdout + replay.result.stderr
    lines = replay.result.stdout.splitlines()
    assert sum(line.startswith("MATCH") for line in lines) == len(CASES.cases) == 16
    assert {"reference-v1", "kontext-v1"} <= {case.recipe for case in CASES.cases}


def test_every_golden_file_holds_the_same_requests() -> None:
    """Only the hashes may differ between CPU kinds: the requests, inputs and recipes are one set."""
    def requests(path: Path) -> list[tuple[str, object, object, object]]:
        return [(c.name, c.request.model_dump(), c.recipe, c.image_file and c.image_file.name)
                for c in read_cases(path).cases]

    assert len(GOLDEN_FILES) >= 2
    for path in GOLDEN_FILES[1:]:
        assert requests(path) == requests(GOLDEN_FILES[0]), path.name
        environment = read_cases(path).environment
        assert environment.get("cpu_vendor") and environment.get("cpu_kernels"), path.name


def test_a_mismatch_exits_1_and_says_what_differs(replay: Replay, golden_model_dir: Path, tmp_path: Path) -> None:
    lines = GOLDEN_FILES[0].read_text().splitlines()
    environment = json.loads(lines[0])
    environment["environment"]["diffusers"] = "0.0.1"  # as if recorded on another stack
    name = "kontext-v1/rgb-512-64x64"
    case = json.loads(next(line for line in lines if name in line))
    pixels_only = {**case, "name": "png-only", "expected_sha256": "0" * 64,  # same pixels, other PNG bytes
                   "expected_pixels_sha256": replay.pixels[name]}
    different = {**case, "name": "different", "expected_sha256": "1" * 64, "expected_pixels_sha256": "2" * 64}
    cases = tmp_path / "cases.jsonl"
    cases.write_text("\n".join(json.dumps(x) for x in (environment, pixels_only, different)) + "\n")
    shutil.copytree(GOLDEN_DIR / "inputs", tmp_path / "inputs")
    result = _conformance(cases, golden_model_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH (same pixels: the PNG encoder differs) png-only" in result.stdout
    assert "MISMATCH  different" in result.stdout and "0/2 cases match" in result.stdout
    assert "differs from the recorded environment: diffusers: recorded 0.0.1, here" in result.stdout


@pytest.fixture(scope="module")
def reference_editor(golden_model_dir: Path) -> Iterator[object]:
    import torch

    from tests.reference_miner import ReferenceKontextEditor

    with process_state_restored():
        torch.set_num_threads(1)  # the miner's KONTEXT_CPU_THREADS: on the CPU the count changes the sums
        yield ReferenceKontextEditor(str(golden_model_dir), device="cpu", dtype=torch.float32)


REFERENCE_CASES = [case for case in CASES.cases if case.recipe == "reference-v1"]
END_TO_END = ("reference/validator-exact-payload", "reference/big-2049x1000", "reference/palette-transparent-200x200")
"""The cases the reference recipe runs whole (pipeline and PNG) here: the validator's payload (the most steps), a
resize and a mode conversion with transparency. Every case's pipeline call is compared below; the pipeline and the
PNG encoder do the same for every input kind, so these three carry the rest to the bytes."""


@pytest.mark.parametrize("case", [case for case in REFERENCE_CASES if case.name in END_TO_END], ids=END_TO_END)
def test_the_reference_miners_recipe_gives_the_miners_bytes(reference_editor, replay: Replay, case) -> None:
    """The same PNG bytes as the miner's default recipe made for the same request on this machine (and, where a
    golden file is recorded for this CPU kind, as the golden bytes: the test above)."""
    assert case.image_file is not None
    request = case.request
    png = reference_editor.edit_png(case.image_file.read_bytes(), prompt=request.prompt, seed=request.seed,
                                    guidance_scale=request.guidance_scale,
                                    num_inference_steps=request.num_inference_steps)
    assert hashlib.sha256(png).hexdigest() == replay.png[case.name], (
        f"{case.name}: the reference recipe gave other bytes than the miner's replay")


class _Called(Exception):
    """Raised by the recording pipeline instead of running it."""


class _RecordingPipeline:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **kwargs: object) -> None:
        self.calls.append(kwargs)
        raise _Called


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=[case.name for case in REFERENCE_CASES])
def test_the_reference_recipe_calls_the_pipeline_as_the_miner_does(case) -> None:
    """RGB, grey, palette, palette with transparency, RGBA, EXIF-rotated JPEG, non-square, over 1024, with and
    without width/height, a seed past numpy's range and the validator's exact payload: the reference miner's
    preprocessing and seeding hand the pipeline the same arguments as the miner's reference-v1 (the same pixels,
    the same generator state, the same prompt, guidance, steps and output type, nothing more or less)."""
    import torch

    from kontext.engine.recipes import EditParams, get_recipe
    from tests.reference_miner import ReferenceKontextEditor

    assert case.image_file is not None
    image, request = case.image_file.read_bytes(), case.request
    pipeline = _RecordingPipeline()
    with pytest.raises(_Called):
        ReferenceKontextEditor.around(pipeline, device="cpu").edit_png(
            image, prompt=request.prompt, seed=request.seed, guidance_scale=request.guidance_scale,
            num_inference_steps=request.num_inference_steps)
    (theirs,) = pipeline.calls
    recipe, params = get_recipe("reference-v1"), EditParams.from_request(request)
    ours = recipe.pipeline_kwargs(recipe.preprocess(image, max_pixels=1 << 26), params, recipe.seed(params.seed, "cpu"))
    torch.use_deterministic_algorithms(False)  # the reference's seeding switched it on for this process
    assert sorted(ours) == sorted(theirs)
    for key, value in ours.items():
        if key == "image":
            assert (value.mode, value.size, value.tobytes()) == (theirs[key].mode, theirs[key].size,
                                                                 theirs[key].tobytes()), case.name
        elif key == "generator":
            assert value.device == theirs[key].device and torch.equal(value.get_state(), theirs[key].get_state())
        else:
            assert value == theirs[key], (case.name, key)


def test_the_golden_file_covers_every_input_kind() -> None:
    names = {case.name for case in REFERENCE_CASES}
    for kind in ("rgb-512", "grey", "palette-240", "palette-transparent", "rgba", "exif-rotated", "wide",
                 "big-2049", "without-size", "validator-exact-payload", "seed-past-numpys-range"):
        assert any(kind in name for name in names), kind
    assert all(case.image_file is not None and case.image_file.is_file() for case in CASES.cases)
