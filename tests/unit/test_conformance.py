"""Case files: what ``--record`` writes reads back to the same inputs, wherever it is written."""

from __future__ import annotations

import json
from pathlib import Path

from kontext.conformance import Outcome, read_cases, record


def test_a_case_file_recorded_elsewhere_still_finds_its_image_files(tmp_path: Path) -> None:
    source = tmp_path / "golden" / "cases.jsonl"
    (source.parent / "inputs").mkdir(parents=True)
    (source.parent / "inputs" / "rgb.png").write_bytes(b"png bytes")
    source.write_text(json.dumps({"name": "rgb", "image_file": "inputs/rgb.png", "expected_sha256": None,
                                  "request": {"prompt": "p", "seed": 1}}) + "\n")
    (case,) = read_cases(source).cases
    assert case.image_file is not None and case.image_file.read_bytes() == b"png bytes"
    elsewhere = tmp_path / "out" / "deeper" / "cuda.jsonl"
    elsewhere.parent.mkdir(parents=True)
    record(elsewhere, [Outcome(case, "reference-v1", "a" * 64, "b" * 64, 64, 64)], {"torch": "2.13.0"})
    recorded = read_cases(elsewhere)
    (again,) = recorded.cases
    assert again.image_file is not None and again.image_file.read_bytes() == b"png bytes"
    assert (again.expected_sha256, again.expected_pixels_sha256, again.recipe) == ("a" * 64, "b" * 64, "reference-v1")
    assert recorded.environment == {"torch": "2.13.0"}
