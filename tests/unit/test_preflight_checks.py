"""The preflight's verdicts read from a job's status and the miner's profile, the validator's payload as the client
builds it, and the cases conformance --against sends to both miners."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any, Optional

import pytest

from kontext.client.checks import timing_checks
from kontext.client.compare import builtin_case, payload_of
from kontext.client.signing import uuid7
from kontext.client.validator import compact, edit_payload
from kontext.conformance import read_cases

SUBNET = {"name": "subnet", "callback_not_before_seconds": 8.0, "admission_deadline_seconds": 15.0}


def status(done_after: Optional[float], *, state: str = "completed", **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"status": state, "queued_at": "2026-01-02T03:04:05.000000Z", **extra}
    if done_after is not None:
        record["completed_at"] = f"2026-01-02T03:04:{5 + done_after:09.6f}Z"
    return record


def verdicts(checks: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {check.name: f"{check.verdict} {check.seen}" for check in checks}


def test_the_subnet_profile_passes() -> None:
    seen = verdicts(timing_checks(status(3.0), SUBNET, callback_requested=False))
    assert seen["timing (done by 15 s)"].startswith("PASS completed 3.0 s after it arrived")
    assert seen["timing (callback not before 8 s)"].startswith("PASS profile subnet: callbacks no earlier than 8 s")


@pytest.mark.parametrize("profile, words", [
    ({**SUBNET, "name": "local", "callback_not_before_seconds": 0.0}, "this job's would come 3.0 s after it"),
    ({**SUBNET, "admission_deadline_seconds": None}, "admission deadline None: a burst is accepted"),
])
def test_a_miner_that_would_call_back_too_early_or_take_a_burst_fails(profile: dict, words: str) -> None:
    (check,) = [c for c in timing_checks(status(3.0), profile, callback_requested=False) if "8 s" in c.name]
    assert check.verdict == "FAIL" and words in check.seen


def test_without_a_profile_the_rule_cannot_be_read_unless_the_status_shows_it() -> None:
    (_, rule) = timing_checks(status(3.0), None, callback_requested=False)
    assert rule.verdict == "SKIP" and "has no 'profile': its timing rule cannot be read" in rule.seen
    early = {"state": "waiting", "not_before": "2026-01-02T03:04:07Z"}
    (_, rule, _) = timing_checks(status(3.0), None, callback_requested=True, pending=early)
    assert rule.verdict == "FAIL" and "waits until 2.0 s after arrival" in rule.seen
    (_, rule, _) = timing_checks(status(3.0), None, callback_requested=True,
                                 pending={"state": "waiting", "not_before": "2026-01-02T03:04:13Z"})
    assert rule.verdict == "PASS"


def test_a_late_or_failed_job_fails() -> None:
    (late, _) = timing_checks(status(14.5), SUBNET, callback_requested=False)
    assert late.verdict == "FAIL" and "later than the validator's 15 s" in late.seen
    (failed,) = timing_checks(status(None, state="failed", error="CUDA out of memory"), SUBNET,
                              callback_requested=False)
    assert failed.verdict == "FAIL" and "CUDA out of memory" in failed.seen


@pytest.mark.parametrize("callback, verdict, words", [
    ({"status": "delivered", "status_code": 200, "attempted_at": "2026-01-02T03:04:13.100000Z"}, "PASS",
     "delivered (HTTP 200) 8.1 s after arrival"),
    ({"status": "delivered", "status_code": 200, "attempted_at": "2026-01-02T03:04:08Z"}, "FAIL",
     "outside the validator's 8-15 s window"),
    ({"status": "failed", "status_code": 500, "error": "receiver says no", "attempted_at": "2026-01-02T03:04:13Z"},
     "FAIL", "failed 8.0 s after arrival: receiver says no (HTTP 500)"),
    (None, "FAIL", "no outcome 30 s after dispatch (pending: sending)"),
])
def test_the_callback_as_the_status_reports_it(callback: Optional[dict], verdict: str, words: str) -> None:
    record = status(3.0, callback_pending={"state": "sending"}) if callback is None else status(3.0, callback=callback)
    check = timing_checks(record, SUBNET, callback_requested=True, waited=30.0)[-1]
    assert check.name == "callback" and check.verdict == verdict and words in check.seen, check


def test_the_validators_payload() -> None:
    payload = edit_payload(seed=7, image_b64="aGk=", callback_url="https://v.example/results/callback")
    assert list(payload) == ["prompt", "negative_prompt", "image_b64", "width", "height", "guidance_scale",
                             "num_inference_steps", "enable_safety_checker", "seed", "job_id", "callback_url",
                             "callback_secret", "task_type", "flux_mode"]
    assert (payload["width"], payload["height"], payload["guidance_scale"], payload["num_inference_steps"]) == \
        (1024, 1024, 4.0, 10)
    assert (payload["task_type"], payload["flux_mode"], payload["enable_safety_checker"]) == \
        ("img-h100_pcie", "kontext", False)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", payload["job_id"])
    assert re.fullmatch(r"[0-9a-f]{32}", payload["callback_secret"])
    assert "callback_url" not in edit_payload(seed=7, image_url="https://v.example/in.png")
    assert b" " not in compact({"a": [1, 2]}) and uuid7() != uuid7()


def test_conformance_sends_the_cases_input_inline_with_a_fresh_job_and_no_callback(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(b"png")
    request = {**edit_payload(seed=3, image_url="https://v.example/x.png", callback_url="https://v.example/cb")}
    (tmp_path / "cases.jsonl").write_text(json.dumps({"name": "c", "image_file": "in.png", "request": request}))
    (case,) = read_cases(tmp_path / "cases.jsonl").cases
    sent = payload_of(case)
    assert base64.b64decode(sent["image_b64"]) == b"png" and "image_url" not in sent
    assert not {"job_id", "callback_url", "callback_secret"} & set(sent)
    assert {k: v for k, v in sent.items() if k != "image_b64"} == \
        {k: v for k, v in request.items() if k not in ("image_url", "job_id", "callback_url", "callback_secret")}
    builtin = payload_of(builtin_case())
    assert builtin["num_inference_steps"] == 10 and builtin["task_type"] == "img-h100_pcie" and "image_b64" in builtin
