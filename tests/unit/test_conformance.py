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


def test_record_keeps_the_validators_request_exactly_fields_the_miner_ignores_included(tmp_path: Path) -> None:
    """--record wrote the parsed request back: negative_prompt, task_type and the rest of the validator's
    payload were gone from the golden 'validator exact payload' case."""
    payload = {"prompt": "p", "seed": 1, "negative_prompt": "bad quality", "task_type": "img-h100_pcie",
               "flux_mode": "kontext", "enable_safety_checker": False, "width": 1024, "height": 1024}
    source = tmp_path / "cases.jsonl"
    source.write_text(json.dumps({"name": "v", "expected_sha256": None, "request": payload}) + "\n")
    (case,) = read_cases(source).cases
    out = tmp_path / "recorded.jsonl"
    record(out, [Outcome(case, "reference-v1", "a" * 64, "b" * 64, 1024, 1024)], {})
    written = json.loads(out.read_text().splitlines()[1])
    assert written["request"] == payload


def test_the_golden_validator_case_is_the_validators_whole_payload() -> None:
    golden = Path(__file__).resolve().parents[1] / "golden"
    for path in sorted(golden.glob("tiny-cpu-*.jsonl")):
        (case,) = [c for c in read_cases(path).cases if c.name == "reference/validator-exact-payload"]
        assert {"negative_prompt", "task_type", "flux_mode", "enable_safety_checker", "callback_secret",
                "job_id"} <= set(case.raw_request), path.name
