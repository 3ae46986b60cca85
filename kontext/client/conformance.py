"""`kontext-client conformance CASES.jsonl`: replay recorded requests through this machine's engine (with
``--against URL``: on two miners instead, kontext/client/compare.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "conformance", help="replay cases (a validator request + the expected PNG SHA256 per line) through the "
        "engine; print match/mismatch, hashes and the environment; exit 1 on any mismatch. With --against URL: "
        "run them on this miner (--url, or --axon signed) and on the miner at URL, and compare the PNG bytes")
    parser.add_argument("cases", type=Path, nargs="?",
                        help="JSON Lines case file (kontext/conformance.py describes it); with --against it may be "
                        "left out: one built-in validator-like case")
    parser.add_argument("--against", metavar="URL",
                        help="another miner speaking the seed's HTTP contract (POST /edit, GET /edit/status/{id}, "
                        "GET /edit/result/{id}), e.g. the subnet's reference miner")
    parser.add_argument("--timeout", type=float, default=300, help="seconds each job may take (with --against)")
    parser.add_argument("--env-file", default=".env", help="miner settings (model, device, dtype, engine options)")
    parser.add_argument("--model", help="KONTEXT_MODEL_PATH")
    parser.add_argument("--recipe", help="KONTEXT_RECIPE for cases that name none")
    parser.add_argument("--device", help="KONTEXT_DEVICES: auto, cuda, cpu or e.g. cuda:0")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], help="KONTEXT_DTYPE")
    parser.add_argument("--record", type=Path, help="write the cases again with the hashes made here")


def run(args: argparse.Namespace) -> int:
    """0 when every case matches, 1 on any mismatch, 2 when the cases or the engine cannot be used."""
    if args.cases is None:
        print("kontext-client conformance: give a case file (CASES.jsonl), or --against URL", file=sys.stderr)
        return 2
    from kontext.process import prepare

    prepare("WARNING")  # the entry points' start: the hash seed (re-executing, or one line and exit 2), quiet libraries

    from kontext import conformance
    from kontext.engine.engine import EngineConfig, EngineState, KontextEngine
    from kontext.engine.environment import pixel_and_png_stack
    from kontext.engine.recipes import EditParams
    from kontext.errors import StartupError
    from kontext.settings import Settings

    try:
        settings = Settings.load(args.env_file, kontext_model_path=args.model, kontext_recipe=args.recipe,
                                 kontext_devices=args.device, kontext_dtype=args.dtype, kontext_self_check=False)
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        case_file = conformance.read_cases(args.cases)
    except (OSError, conformance.CaseError) as exc:
        print(f"cannot read cases: {exc}", file=sys.stderr)
        return 2
    engines: dict[str, KontextEngine] = {}

    def engine_for(recipe: str) -> KontextEngine:
        if recipe not in engines:
            config = EngineConfig.from_settings(settings.model_copy(update={"kontext_recipe": recipe}))
            engine = KontextEngine(config)
            engine.load()
            if engine.state is not EngineState.READY:
                raise RuntimeError(f"the engine did not load: {engine.error}")
            engines[recipe] = engine
        return engines[recipe]

    def edit(case: conformance.Case, image: bytes) -> Any:
        engine = engine_for(case.recipe or settings.kontext_recipe)
        return engine.edit(image, EditParams.from_request(case.request), max_pixels=settings.max_image_pixels)

    try:
        outcomes = conformance.replay(case_file.cases, edit, conformance.downloader())
    except (conformance.CaseError, RuntimeError, OSError, ValueError) as exc:
        print(f"cannot replay: {exc}", file=sys.stderr)
        return 2
    first = next(iter(engines.values()), None)
    environment = pixel_and_png_stack(first.device_name(__import__("torch")) if first else None)
    environment["engine_profile"] = first.profile if first else "-"
    all_match = conformance.report(outcomes, environment, case_file.environment, sys.stdout)
    if args.record:
        conformance.record(args.record, outcomes, environment)
        print(f"recorded {len(outcomes)} case(s) in {args.record}")
    return 0 if all_match else 1
