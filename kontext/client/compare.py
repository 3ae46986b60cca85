"""`kontext-client conformance --against URL`: the same cases on this miner and on another that speaks the seed's
HTTP contract (the subnet's reference miner, say); per case, whether the two PNGs are the same bytes."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Optional, TextIO

from kontext.client.miner import Miner, edit_png
from kontext.client.signing import uuid7
from kontext.client.validator import edit_payload, sample_image_b64
from kontext.conformance import Case, read_cases
from protocol import EditRequest

BUILTIN_SEED = 1234


def builtin_case() -> Case:
    """One validator-like request (its payload's fields and values, a generated input, no callback)."""
    payload = edit_payload(seed=BUILTIN_SEED, image_b64=sample_image_b64())
    return Case(line=0, name="validator-like (built in)", request=EditRequest.model_validate(payload),
                expected_sha256=None, raw_request=payload)


def load(path: Optional[Path]) -> list[Case]:
    """The cases of a JSON Lines case file (kontext/conformance.py), or the built-in one."""
    return read_cases(path).cases if path is not None else [builtin_case()]


def payload_of(case: Case) -> dict[str, Any]:
    """The case's request as both miners get it: its input inline (``image_file`` becomes ``image_b64``, as the
    local replay reads it first), a fresh job_id for each submission, no callback (nobody listens for it)."""
    payload = dict(case.raw_request or case.request.model_dump(mode="json", exclude_none=True))
    if case.image_file is not None:
        payload.pop("image_url", None)
        payload["image_b64"] = base64.b64encode(case.image_file.read_bytes()).decode()
    for key in ("callback_url", "callback_secret", "job_id"):
        payload.pop(key, None)
    return payload


def compare(cases: list[Case], this: Miner, other: Miner, *, names: tuple[str, str], timeout: float,
            out: TextIO) -> int:
    """Run each case on both miners and print one line per case; 0 when every pair is equal, else 1."""
    equal = 0
    for case in cases:
        payload = payload_of(case)
        hashes = []
        for miner in (this, other):
            _, png = edit_png(miner, {**payload, "job_id": uuid7()}, timeout)
            hashes.append(hashlib.sha256(png).hexdigest())
        same = hashes[0] == hashes[1]
        equal += same
        expected = f" expected={case.expected_sha256}" if case.expected_sha256 else ""
        print(f"{'EQUAL' if same else 'DIFFERENT':<9} {case.name}: this={hashes[0]} other={hashes[1]}{expected}",
              file=out, flush=True)
    print(f"{equal}/{len(cases)} case(s) give the same PNG bytes on {names[0]} (this) and {names[1]} (other)",
          file=out)
    return 0 if equal == len(cases) else 1
