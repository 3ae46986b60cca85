"""A preflight check's verdict line, and the timing verdicts read from a job's status and the miner's profile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Optional

from kontext.client.validator import CALLBACK_DEADLINE_S, CALLBACK_NOT_BEFORE_S

UPLOAD_ROOM_S = 1.0
"""What a job finished must leave before the 15 s deadline: encoding done, the callback's upload still to go."""
NOT_BEFORE_FIX = "CALLBACK_NOT_BEFORE_SECONDS=8 (the neuron's subnet profile)"


@dataclass(frozen=True)
class Check:
    verdict: Literal["PASS", "FAIL", "SKIP"]
    name: str
    seen: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.verdict} {self.name}: {self.seen}"
        return f"{text} -> fix: {self.fix}" if self.verdict == "FAIL" and self.fix else text


def passed(name: str, seen: str) -> Check:
    return Check("PASS", name, seen)


def failed(name: str, seen: str, fix: str) -> Check:
    return Check("FAIL", name, seen, fix)


def skipped(name: str, why: str) -> Check:
    return Check("SKIP", name, why)


def _time(value: Any) -> Optional[float]:
    """An ISO 8601 timestamp of the status record as epoch seconds (``Z`` or an offset; naive is UTC)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _after_arrival(status: dict[str, Any], value: Any) -> Optional[float]:
    """Seconds from the job's arrival (``queued_at``, the miner's clock) to ``value`` (same clock)."""
    arrived, moment = _time(status.get("queued_at")), _time(value)
    return None if arrived is None or moment is None else moment - arrived


def timing_checks(status: dict[str, Any], profile: Optional[dict[str, Any]], *, callback_requested: bool,
                  pending: Optional[dict[str, Any]] = None, waited: float = 0.0) -> list[Check]:
    """The job against the validator's window: its callback no earlier than 8 s and no later than 15 s after
    dispatch. ``pending``: the last ``callback_pending`` the status showed; ``waited``: seconds followed."""
    checks = [_completion(status, waited)]
    elapsed = _after_arrival(status, status.get("completed_at"))
    if elapsed is not None:
        checks.append(_not_before(profile, elapsed, pending, status))
    if callback_requested:
        checks.append(_callback(status, waited))
    return checks


def _completion(status: dict[str, Any], waited: float) -> Check:
    name = "timing (done by 15 s)"
    if status.get("status") == "failed":
        return failed(name, f"the job failed: {status.get('error')}", "see the miner's log for this job")
    elapsed = _after_arrival(status, status.get("completed_at"))
    if status.get("status") != "completed" or elapsed is None:
        return failed(name, f"not finished {waited:.0f} s after dispatch (status {status.get('status')})",
                      "a job must finish well within 15 s: see GET /health (queue, engine) and the miner's log")
    seen = f"completed {elapsed:.1f} s after it arrived"
    if elapsed > CALLBACK_DEADLINE_S - UPLOAD_ROOM_S:
        return failed(name, f"{seen}: its callback would come later than the validator's {CALLBACK_DEADLINE_S:g} s",
                      "the audited card (H100 PCIe), fewer jobs ahead, and ADMISSION_DEADLINE_SECONDS so a job that "
                      "would be late is refused at once")
    return passed(name, f"{seen} (the validator fails a callback later than {CALLBACK_DEADLINE_S:g} s)")


def _not_before(profile: Optional[dict[str, Any]], elapsed: float, pending: Optional[dict[str, Any]],
                status: dict[str, Any]) -> Check:
    name = "timing (callback not before 8 s)"
    if profile is not None:
        label = f"profile {profile.get('name', '?')}"
        not_before = profile.get("callback_not_before_seconds")
        deadline = profile.get("admission_deadline_seconds")
        if not isinstance(not_before, (int, float)) or not_before < CALLBACK_NOT_BEFORE_S:
            return failed(name, f"{label}: callbacks wait {not_before} s after arrival; this job's would come "
                                f"{max(elapsed, not_before or 0.0):.1f} s after it, and any job faster than "
                                f"{CALLBACK_NOT_BEFORE_S:g} s calls back too early", NOT_BEFORE_FIX)
        if not isinstance(deadline, (int, float)) or deadline > CALLBACK_DEADLINE_S:
            return failed(name, f"{label}: admission deadline {deadline}: a burst is accepted and calls back after "
                                f"{CALLBACK_DEADLINE_S:g} s", "ADMISSION_DEADLINE_SECONDS=15 (the subnet profile)")
        return passed(name, f"{label}: callbacks no earlier than {not_before:g} s, jobs refused that would call back "
                            f"after {deadline:g} s")
    waits = _after_arrival(status, (pending or {}).get("not_before"))
    if waits is not None:
        if waits < CALLBACK_NOT_BEFORE_S - 0.05:
            return failed(name, f"the status says the callback waits until {waits:.1f} s after arrival",
                          NOT_BEFORE_FIX)
        return passed(name, f"the status says the callback waits until {waits:.1f} s after arrival")
    return skipped(name, f"the miner's GET /health has no 'profile': its timing rule cannot be read (this job "
                         f"completed {elapsed:.1f} s after arrival; the validator fails a callback before "
                         f"{CALLBACK_NOT_BEFORE_S:g} s: {NOT_BEFORE_FIX})")


def _callback(status: dict[str, Any], waited: float) -> Check:
    """What the status says of the callback (the preflight cannot see it arrive at --callback-url)."""
    name = "callback"
    record = status.get("callback")
    if not isinstance(record, dict):
        state = (status.get("callback_pending") or {}).get("state", "no record")
        return failed(name, f"no outcome {waited:.0f} s after dispatch (pending: {state})", "see the miner's log")
    outcome, code = record.get("status"), record.get("status_code")
    sent = _after_arrival(status, record.get("attempted_at"))
    when = f" {sent:.1f} s after arrival" if sent is not None else ""
    if outcome != "delivered":
        return failed(name, f"{outcome}{when}: {record.get('error') or '-'} (HTTP {code or '-'})",
                      "--callback-url must be public and answer 2xx to the miner's POST")
    if sent is not None and not CALLBACK_NOT_BEFORE_S - 0.05 <= sent <= CALLBACK_DEADLINE_S:
        fix = NOT_BEFORE_FIX if sent < CALLBACK_NOT_BEFORE_S else "finish sooner (see 'timing (done by 15 s)')"
        return failed(name, f"delivered (HTTP {code}){when}: outside the validator's "
                            f"{CALLBACK_NOT_BEFORE_S:g}-{CALLBACK_DEADLINE_S:g} s window", fix)
    return passed(name, f"delivered (HTTP {code}){when}, as the status says (its arrival is not seen from here)")
