"""Byte for byte with the reference miner (CPU half): the golden cases replay through the real conformance
command, and the reference miner's own recipe, written independently (tests/reference_miner.py), gives
the same PNG bytes the miner recorded. Together: the miner's default output equals the reference's."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from kontext.conformance import read_cases
from tests.e2e.servers import REPO_ROOT

pytestmark = pytest.mark.e2e

GOLDEN = REPO_ROOT / "tests" / "golden" / "tiny-cpu.jsonl"
GOLDEN_CASES = read_cases(GOLDEN)


def _conformance(cases: Path, model: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "client.cli", "conformance", str(cases), "--model", str(model),
                           "--device", "cpu", "--env-file", os.devnull],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_golden_cases_conform_for_both_recipes(tiny_model_dir: Path) -> None:
    """Any change that moves a byte of either recipe fails here, with the environment diff in the output."""
    result = _conformance(GOLDEN, tiny_model_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("MATCH") for line in lines) == len(GOLDEN_CASES.cases) == 16
    assert {"reference-v1", "kontext-v1"} <= {case.recipe for case in GOLDEN_CASES.cases}


def test_a_mismatch_exits_1_and_says_what_differs(tiny_model_dir: Path, tmp_path: Path) -> None:
    lines = GOLDEN.read_text().splitlines()
    environment = json.loads(lines[0])
    environment["environment"]["diffusers"] = "0.0.1"  # as if recorded on another stack
    case = json.loads(next(line for line in lines if "kontext-v1/rgb-512-64x64" in line))
    pixels_only = {**case, "name": "png-only", "expected_sha256": "0" * 64}  # same pixels, other PNG bytes
    different = {**case, "name": "different", "expected_sha256": "1" * 64, "expected_pixels_sha256": "2" * 64}
    cases = tmp_path / "cases.jsonl"
    cases.write_text("\n".join(json.dumps(x) for x in (environment, pixels_only, different)) + "\n")
    shutil.copytree(GOLDEN.parent / "inputs", tmp_path / "inputs")
    result = _conformance(cases, tiny_model_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH (same pixels: the PNG encoder differs) png-only" in result.stdout
    assert "MISMATCH  different" in result.stdout and "0/2 cases match" in result.stdout
    assert "differs from the recorded environment: diffusers: recorded 0.0.1, here" in result.stdout


@pytest.fixture(scope="module")
def reference_editor(tiny_model_dir: Path) -> Iterator[object]:
    import torch

    from tests.reference_miner import ReferenceKontextEditor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the miner's KONTEXT_CPU_THREADS: on the CPU the count changes the sums
    try:
        yield ReferenceKontextEditor(str(tiny_model_dir), device="cpu", dtype=torch.float32)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)


REFERENCE_CASES = [case for case in GOLDEN_CASES.cases if case.recipe == "reference-v1"]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=[case.name for case in REFERENCE_CASES])
def test_the_reference_miners_recipe_gives_the_golden_bytes(reference_editor, case) -> None:
    """RGB, grey, palette, palette with transparency, RGBA, EXIF-rotated JPEG, non-square, over 1024, with and
    without width/height, a seed past numpy's range and the validator's exact payload."""
    assert case.image_file is not None
    request = case.request
    png = reference_editor.edit_png(case.image_file.read_bytes(), prompt=request.prompt, seed=request.seed,
                                    guidance_scale=request.guidance_scale,
                                    num_inference_steps=request.num_inference_steps)
    assert hashlib.sha256(png).hexdigest() == case.expected_sha256, (
        f"{case.name}: the reference recipe gave other bytes than the miner recorded")


def test_the_golden_file_covers_every_input_kind() -> None:
    names = {case.name for case in REFERENCE_CASES}
    for kind in ("rgb-512", "grey", "palette-240", "palette-transparent", "rgba", "exif-rotated", "wide",
                 "big-2049", "without-size", "validator-exact-payload", "seed-past-numpys-range"):
        assert any(kind in name for name in names), kind
    assert all(case.image_file is not None and case.image_file.is_file() for case in GOLDEN_CASES.cases)
