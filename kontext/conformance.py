"""Conformance replay: run recorded requests through the engine and say, per case, whether the bytes match.

An operator whose miner failed an audit replays the validator's request (for example from an
audit-failure record) with its expected PNG SHA256, and learns whether the pixels or only the PNG
encoding differ, on which versions. The suite replays a golden file for the tiny model on CPU.

A case file is JSON Lines. An optional first line ``{"environment": {...}}`` records where the
expected hashes were made; every other line is one case::

    {"name": "rgb", "request": {<the validator's /edit body>}, "expected_sha256": "<png sha256>",
     "expected_pixels_sha256": "<optional>", "recipe": "<optional, else the miner's>",
     "image_file": "<optional, relative to the case file; else request.image_b64 or image_url>"}
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TextIO

from protocol import EditRequest


class CaseError(ValueError):
    """A case file that cannot be replayed; the message names the line."""


@dataclass(frozen=True)
class Case:
    line: int
    name: str
    request: EditRequest
    expected_sha256: Optional[str]
    expected_pixels_sha256: Optional[str] = None
    recipe: Optional[str] = None
    image_file: Optional[Path] = None
    raw_request: dict[str, Any] = field(default_factory=dict, compare=False)
    """The request exactly as the case file holds it (fields the miner ignores included), for ``record``."""


@dataclass
class CaseFile:
    cases: list[Case]
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    case: Case
    recipe: str
    sha256: str
    pixels_sha256: str
    width: int
    height: int

    @property
    def match(self) -> bool:
        return self.sha256 == self.case.expected_sha256

    @property
    def verdict(self) -> str:
        if self.match:
            return "MATCH"
        if self.case.expected_pixels_sha256 and self.pixels_sha256 == self.case.expected_pixels_sha256:
            return "MISMATCH (same pixels: the PNG encoder differs)"
        return "MISMATCH"


def read_cases(path: Path) -> CaseFile:
    result = CaseFile(cases=[])
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CaseError(f"{path}:{number}: not JSON: {exc}") from None
        if "environment" in data and "request" not in data:
            result.environment = {str(k): str(v) for k, v in data["environment"].items()}
            continue
        try:
            request = EditRequest.model_validate(data["request"])
        except (KeyError, ValueError) as exc:
            raise CaseError(f"{path}:{number}: the case needs a valid 'request': {exc}") from None
        image_file = data.get("image_file")
        result.cases.append(Case(
            line=number, name=str(data.get("name") or f"line {number}"), request=request,
            expected_sha256=data.get("expected_sha256"), expected_pixels_sha256=data.get("expected_pixels_sha256"),
            recipe=data.get("recipe"), image_file=(path.parent / image_file) if image_file else None,
            raw_request=dict(data["request"]),
        ))
    return result


def input_bytes(case: Case, download: Callable[[str], bytes]) -> bytes:
    """The case's input image: a file beside the cases, the request's base64, or its image_url."""
    if case.image_file is not None:
        return case.image_file.read_bytes()
    if case.request.image_b64:
        return base64.b64decode(case.request.image_b64.split(",", 1)[-1])
    if case.request.image_url:
        return download(case.request.image_url)
    raise CaseError(f"line {case.line} ({case.name}): no image_file, image_b64 or image_url")


def replay(cases: Iterable[Case], edit: Callable[[Case, bytes], Any], download: Callable[[str], bytes],
           ) -> list[Outcome]:
    """Run every case; ``edit(case, image)`` returns the engine's ``EditOutput``."""
    outcomes = []
    for case in cases:
        output = edit(case, input_bytes(case, download))
        outcomes.append(Outcome(case, output.recipe, output.sha256, output.pixels_sha256, output.width,
                                output.height))
    return outcomes


def report(outcomes: list[Outcome], environment: dict[str, str], recorded: dict[str, str], out: TextIO) -> bool:
    """Print one line per case and the environment (with what differs from the recorded one); True if all match."""
    for outcome in outcomes:
        case = outcome.case
        print(f"{outcome.verdict:<9} {case.name} [{outcome.recipe}] {outcome.width}x{outcome.height} "
              f"png={outcome.sha256} pixels={outcome.pixels_sha256}", file=out)
        if not outcome.match:
            print(f"          expected png={case.expected_sha256} pixels={case.expected_pixels_sha256 or '-'}",
                  file=out)
    matched = sum(outcome.match for outcome in outcomes)
    print(f"{matched}/{len(outcomes)} cases match", file=out)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in environment.items()), file=out)
    differs = {k: (recorded.get(k), environment.get(k)) for k in sorted(set(recorded) | set(environment))
               if recorded and recorded.get(k) != environment.get(k)}
    for key, (then, now) in differs.items():
        print(f"  differs from the recorded environment: {key}: recorded {then}, here {now}", file=out)
    return matched == len(outcomes)


def record(path: Path, outcomes: list[Outcome], environment: dict[str, str]) -> None:
    """Write the case file again with the hashes made here (a new golden file); each request as it was read
    (the validator's extra fields kept); ``image_file`` paths are written relative to ``path``, as
    ``read_cases`` reads them, wherever the new file goes."""
    lines = [json.dumps({"environment": environment}, sort_keys=True)]
    for outcome in outcomes:
        case = outcome.case
        entry: dict[str, Any] = {"name": case.name, "recipe": outcome.recipe,
                                 "request": case.raw_request or case.request.model_dump(mode="json",
                                                                                        exclude_none=True),
                                 "expected_sha256": outcome.sha256, "expected_pixels_sha256": outcome.pixels_sha256}
        if case.image_file is not None:
            entry["image_file"] = os.path.relpath(case.image_file, path.parent)
        lines.append(json.dumps(entry, sort_keys=True))
    path.write_text("\n".join(lines) + "\n")


def downloader(allow_private: bool = True, max_bytes: int = 64 * 1024 * 1024, timeout: float = 30.0
               ) -> Callable[[str], bytes]:
    """A blocking ``image_url`` fetch through the miner's own guarded downloader."""
    def download(url: str) -> bytes:
        async def fetch() -> bytes:
            from kontext.delivery.fetch import fetch_image
            from kontext.delivery.guard import make_guarded_session

            async with make_guarded_session(allow_private=allow_private, timeout=timeout) as session:
                return await fetch_image(session, url, max_bytes=max_bytes, timeout=timeout,
                                         allow_private=allow_private)

        return asyncio.run(fetch())

    return download
