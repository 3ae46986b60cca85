#!/usr/bin/env python3
"""One command, one report: what this miner does on a GPU (docs/gpu-proof.md gives the device call).

    python3 scripts/gpu_proof.py --out report.json             # on the lent GPU machine, with its own python3
    python scripts/gpu_proof.py --dry-run --out report.json    # the same code path on CPU, tiny model only

Sections (each one that cannot run says why in the report; the others still run):

* environment: the GPU (name, SM count, driver), torch, CUDA, diffusers, transformers, Pillow, zlib, Python,
  with the auditor's Python and zlib beside this host's;
* determinism: the same request (the validator's payload, default recipe and profile) twice in this process
  and once in a fresh one, for the tiny model and FLUX.1-Kontext-dev's architecture at full size (seeded
  random weights, bf16, built on the GPU: tools/synthetic_kontext.py): the same PNG SHA256?
* reference: reference-v1 through the engine against the independent reference implementation
  (tests/reference_miner.py), byte for byte: the golden cases on the tiny model, two validator-like payloads
  on the full-size one;
* latency: the full-size edit at 1024x1024, 10 steps (the validator's) and 28 (the seed's), p50 of 3, with
  load time; the engine over a bare pipeline call with the same arguments; request-to-callback overhead
  through a real sidecar on loopback beyond the edit's own time;
* memory: weights, the card's peak VRAM, the host's peak RSS;
* pipeline: the engine busy fraction of 6 queued full-size jobs through the real worker (a Runtime), from
  the engine's device log.

Where the image lacks diffusers, pydantic and the rest, the wheels carried in .whl/ (scripts/gpu_wheels.sh)
are installed into a temp dir first. The report is written after every step, so a run cut off by its
time limit still leaves what it measured; ``--budget-s`` stops starting new steps before that.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CARRIED = ("diffusers", "pydantic", "pydantic_core", "pydantic_settings", "dotenv", "ftfy", "aiosqlite")
"""Modules the lent machine's image lacks (the device tool's KINDS.md); scripts/gpu_wheels.sh fetches them."""
SECTIONS = ("environment", "determinism", "reference", "latency", "memory", "pipeline")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to run. The defaults are the issue's; the dry run and the suite's test lower them."""

    dry_run: bool
    budget_s: float
    recipe: str = "reference-v1"
    """The timed sections' recipe (latency, callback, pipeline); determinism and reference use reference-v1."""
    size: int = 1024
    """The timed sections' input side (reference-v1 always makes 1024x1024; kontext-v1 makes this size)."""
    latency_steps: tuple[int, ...] = (10, 28)
    repeats: int = 3
    determinism_steps: int = 10
    reference_cases: Optional[int] = None
    """How many golden reference-v1 cases the tiny model replays (None: all)."""
    reference_steps: int = 10
    """Steps of the full-size reference payloads (the validator's)."""
    pipeline_jobs: int = 6
    pipeline_steps: int = 10
    callback_jobs: int = 3
    callback_steps: int = 2
    only: tuple[str, ...] = SECTIONS
    """The sections to run (a second run can redo what the first did not finish); the environment always runs."""


def install_carried_wheels(wheels: Path) -> Optional[str]:
    """Where a module the proof needs is missing, install the carried wheels (no index, no dependencies) into a
    temp dir and put it first on sys.path and PYTHONPATH (the fresh process and a re-execution inherit it).
    A wheel whose package is installed already, at its version or a later one, is left out."""
    missing = [name for name in CARRIED if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    files = wheels_to_install(sorted(wheels.glob("*.whl")))
    if not files:
        raise SystemExit(f"cannot start: {', '.join(missing)} missing and no wheels for them in {wheels} (run "
                         "scripts/gpu_wheels.sh where pip can download, and carry .whl: docs/gpu-proof.md)")
    target = tempfile.mkdtemp(prefix="kontext-wheels-")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--disable-pip-version-check", "--target", target, *map(str, files)], check=True)
    sys.path.insert(0, target)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [target, os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()
    print(f"installed {len(files)} carried wheels into {target} in {time.perf_counter() - started:.0f} s "
          f"({', '.join(missing)} were missing)", file=sys.stderr)
    return target


def wheels_to_install(files: list[Path]) -> list[Path]:
    """The wheels whose package is not installed, or is older than the wheel."""
    from importlib import metadata

    from packaging.version import Version

    chosen = []
    for path in files:
        name, version = path.name.split("-")[:2]
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            chosen.append(path)
            continue
        if Version(installed) < Version(version):
            chosen.append(path)
    return chosen


class Report:
    """The report's sections, written to ``path`` after every step (atomically: a cut-off run leaves JSON)."""

    def __init__(self, path: Path, plan: Plan) -> None:
        self.path = path
        self.data: dict[str, Any] = {section: {} for section in SECTIONS}
        self.data["plan"] = dataclasses.asdict(plan)

    def put(self, section: str, key: Optional[str], value: Any) -> None:
        if key is None:
            self.data[section] = value
        else:
            self.data[section][key] = value
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, default=str))
        partial.replace(self.path)


class Proof:
    """Runs the steps in order of value, each in its budget, recording a result, an error or why it did not run."""

    def __init__(self, plan: Plan, device: str, report: Report, tiny_dir: Optional[str]) -> None:
        self.plan = plan
        self.device = device
        self.report = report
        self.tiny_dir = tiny_dir
        self.started = time.monotonic()
        self._child_out: tuple[Path, Path] = (Path(os.devnull), Path(os.devnull))

    def step(self, section: str, key: Optional[str], run: Callable[[], Any], *, cheap: bool = False) -> Any:
        """``run()``'s result under ``section``/``key``; its error, or why it did not run, instead. A ``cheap`` step
        (reading what is known) runs after the budget too."""
        if section not in self.plan.only:
            value: Any = {"not_run": f"not asked for (--only {','.join(self.plan.only)})"}
        elif not cheap and time.monotonic() - self.started > self.plan.budget_s:
            value = {"not_run": f"the time budget ({self.plan.budget_s:g} s) was spent before this step"}
        else:
            began = time.perf_counter()
            try:
                value = run()
                if isinstance(value, dict):
                    value.setdefault("step_s", round(time.perf_counter() - began, 2))
            except Exception as exc:  # noqa: BLE001 - one step's failure is recorded; the others still run
                traceback.print_exc()
                value = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        self.report.put(section, key, value)
        return value

    def run(self) -> None:
        from tools import proof
        from tools.bench import tiny_model

        plan, device = self.plan, self.device
        self.step("environment", None, lambda: proof.environment(device), cheap=True)
        models: dict[str, Any] = {}
        problems: dict[str, str] = {}
        try:
            models["tiny"] = proof.Model("tiny", tiny_model(self.tiny_dir), device)
        except Exception as exc:  # noqa: BLE001 - the full-size model's sections still run
            traceback.print_exc()
            problems["tiny"] = f"the tiny model could not be built: {type(exc).__name__}: {exc}"[:1000]
        problem = "dry run: the tiny model only (no full-size build)" if plan.dry_run \
            else proof.full_size_problem(device)
        if problem is None:
            models["full"] = proof.Model("full", "synthetic:full", device)
        else:
            problems["full"] = problem
        # 1. the fresh process starts now and works beside this one (two full copies fit on the lent card)
        fresh = [name for name in models if name == "tiny" or proof.full_size_problem(device, 2) is None]
        child = self._start_fresh_child(models, fresh) if fresh and "determinism" in plan.only else None
        # 2. determinism in this process, and the reference comparison: the tiny model, then the full-size one
        for name in ("tiny", "full"):
            model = models.get(name)
            if model is None:
                for section in ("determinism", "reference"):
                    self.report.put(section, name, {"not_run": problems[name]})
                continue
            self.step("determinism", name, lambda: proof.repeat_in_process(model, plan.determinism_steps))
            self.step("reference", name, lambda: proof.against_reference(model, self._cases(name)))
        if child is not None:
            self._finish_determinism(child, fresh)
        # 3. the timed sections on the largest model here, the card to itself
        timed = models.get("full") or models.get("tiny")
        self.report.put("latency", "model", timed.name if timed else None)
        self.report.put("pipeline", "model", timed.name if timed else None)
        first, *more = plan.latency_steps
        self._timed_step("latency", f"steps_{first}", timed,
                         lambda m: proof.edit_latency(m, plan.recipe, plan.size, first, plan.repeats))
        self._timed_step("latency", "load", timed, proof.load_times, cheap=True)
        self._timed_step("latency", "engine_over_bare", timed,
                         lambda m: proof.engine_over_bare(m, plan.recipe, plan.size, first, plan.repeats))
        self._timed_step("latency", "callback_overhead", timed, self._callback_overhead)
        self._timed_step("pipeline", "busy", timed, self._busy)
        for steps in more:
            self._timed_step("latency", f"steps_{steps}", timed,
                             lambda m: proof.edit_latency(m, plan.recipe, plan.size, steps, plan.repeats))
        self.step("memory", None, lambda: proof.memory(list(models.values())), cheap=True)
        self.report.data["wall_s"] = round(time.monotonic() - self.started, 1)
        self.report.write()

    def _timed_step(self, section: str, key: str, model: Any, run: Callable[[Any], Any], *,
                    cheap: bool = False) -> None:
        if model is None:
            self.report.put(section, key, {"not_run": "no model could be built"})
        else:
            self.step(section, key, lambda: run(model), cheap=cheap)

    def _cases(self, model: str) -> list[tuple[str, bytes, Any]]:
        """The tiny model's golden cases, or the full-size model's two validator-like payloads."""
        from kontext.engine.recipes import EditParams
        from tools import proof

        if model == "full":
            return [(name, *proof.case_named(name, self.plan.reference_steps)) for name in proof.FULL_SIZE_PAYLOADS]
        return [(case.name, case.image_file.read_bytes(), EditParams.from_request(case.request))
                for case in proof.golden_cases(self.plan.reference_cases)]

    def _start_fresh_child(self, models: dict[str, Any], names: list[str]) -> subprocess.Popen[str]:
        """This script again, as ``--fresh-child``: its output goes to files (a full pipe would stall it)."""
        tiny = models.get("tiny")
        spec = {"device": self.device, "tiny": tiny.model_path if tiny else "", "models": names,
                "steps": self.plan.determinism_steps}
        folder = Path(tempfile.mkdtemp(prefix="gpu-proof-fresh-"))
        self._child_out = (folder / "stdout", folder / "stderr")
        with self._child_out[0].open("w") as stdout, self._child_out[1].open("w") as stderr:
            return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--fresh-child", json.dumps(spec)],
                                    stdout=stdout, stderr=stderr, text=True, cwd=ROOT)

    def _finish_determinism(self, child: subprocess.Popen[str], models: list[str]) -> None:
        """The fresh process's hashes beside this process's: identical, for each model?"""
        from tools import proof

        left = max(5.0, self.plan.budget_s - (time.monotonic() - self.started))
        try:
            child.wait(timeout=left)
            stdout, stderr = (path.read_text() for path in self._child_out)
            fresh = proof.child_result(stdout) if child.returncode == 0 else {}
            why = None if child.returncode == 0 else f"the fresh process failed: {stderr.strip()[-1500:]}"
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            fresh, why = {}, f"the fresh process did not finish in the time budget ({self.plan.budget_s:g} s)"
        except RuntimeError as exc:
            fresh, why = {}, str(exc)
        for name in ("tiny", "full"):
            entry = self.report.data["determinism"].get(name, {})
            if "in_process" not in entry:
                continue
            if name in fresh:
                entry["fresh_process"] = fresh[name]
                entry["identical"] = len(set(entry["in_process"]) | {fresh[name]}) == 1
            else:
                entry["fresh_process"] = {"not_run": why or f"{name}: two full-size copies do not fit on this card"}
                entry["identical_in_process"] = len(set(entry["in_process"])) == 1
        self.report.write()

    def _settings(self, model: Any) -> Any:
        from tools.service_runs import service_settings

        return service_settings(model.model_path, Path(tempfile.mkdtemp(prefix="gpu-proof-")), self.plan.recipe)

    def _size(self) -> Optional[int]:
        from kontext.engine.recipes import get_recipe

        return self.plan.size if get_recipe(self.plan.recipe).honours_size else None

    def _callback_overhead(self, model: Any) -> dict[str, Any]:
        from tools.bench import photo_png
        from tools.service_runs import callback_overhead

        engine = model.engine(self.plan.recipe)
        return asyncio.run(callback_overhead(self._settings(model), photo_png(self.plan.size, self.plan.size),
                                             jobs=self.plan.callback_jobs, steps=self.plan.callback_steps,
                                             size=self._size(), engine=engine))

    def _busy(self, model: Any) -> dict[str, Any]:
        from tools.bench import photo_png
        from tools.service_runs import busy_fraction_of_a_queue

        engine = model.engine(self.plan.recipe)
        return asyncio.run(busy_fraction_of_a_queue(self._settings(model), photo_png(self.plan.size, self.plan.size),
                                                    jobs=self.plan.pipeline_jobs, steps=self.plan.pipeline_steps,
                                                    size=self._size(), engine=engine))


def fresh_child(spec_text: str) -> None:
    """``--fresh-child``: the determinism case in a new process, for each model named; one JSON line out."""
    from tools import proof

    spec = json.loads(spec_text)
    models = {"tiny": proof.Model("tiny", spec["tiny"], spec["device"]),
              "full": proof.Model("full", "synthetic:full", spec["device"])}
    print(json.dumps({name: proof.fresh_process_hash(models[name], spec["steps"]) for name in spec["models"]}))


def summary(data: dict[str, Any]) -> list[tuple[str, str]]:
    """One line per section for the printed table."""
    def said(value: Any) -> Optional[str]:
        if not isinstance(value, dict):
            return None
        if "not_run" in value:
            return f"not run ({value['not_run'][:90]})"
        if "error" in value:
            return f"error ({value['error'][:90]})"
        return None

    env = data["environment"]
    gpu = env.get("gpu", {})
    card = f"{gpu['name']} ({gpu['sm_count']} SMs, driver {gpu['driver']})" if "sm_count" in gpu else "no GPU"
    rows = [("environment", said(env) or (
        f"{card}, torch {env['torch']} (CUDA {env['cuda']}), diffusers {env['diffusers']}, "
        f"transformers {env['transformers']}, Pillow {env['pillow']}, {env['png_deflate']} "
        f"(auditor {env['auditor_png_deflate']}), Python {env['python']}"))]
    for section in ("determinism", "reference"):
        parts = []
        for name in ("tiny", "full"):
            value = data[section].get(name, {})
            if said(value):
                parts.append(f"{name}: {said(value)}")
            elif section == "determinism":
                same = value.get("identical", value.get("identical_in_process"))
                fresh = "" if "identical" in value else " (in this process only)"
                parts.append(f"{name}: {'identical' if same else 'DIFFERENT'}{fresh}")
            else:
                parts.append(f"{name}: {value.get('matched')}/{value.get('of')} match")
        rows.append((section, "; ".join(parts)))
    latency = data["latency"]
    load = latency.get("load", {})
    parts = [f"{latency.get('model')} model", said(load) or f"load {load.get('load_s') or 0:.1f} s"]
    for key, value in latency.items():
        if key.startswith("steps_"):
            parts.append(said(value) or f"{value['steps']} steps p50 {value['p50_s']:.2f} s ({value['output']})")
    for key, text in (("engine_over_bare", "engine/bare {ratio:.3f}"),
                      ("callback_overhead", "callback overhead p50 {overhead_ms_p50:.0f} ms")):
        value = latency.get(key, {})
        parts.append(said(value) or text.format(**value))
    rows.append(("latency", ", ".join(parts)))
    memory = data["memory"]
    vram = memory.get("vram", {})
    rows.append(("memory", said(memory) or ", ".join(
        [f"{name} weights {memory[name]['weights_gib']:.2f} GiB" for name in ("tiny", "full") if name in memory]
        + [said(vram) or f"peak VRAM {vram['peak_allocated_gib']:.1f} GiB",
           f"host RSS {memory['host_peak_rss_gib']} GiB"])))
    busy = data["pipeline"].get("busy", {})
    rows.append(("pipeline", said(busy) or (
        f"busy fraction {busy['busy_fraction']:.3f} over {busy['jobs']} queued jobs of {busy['steps']} steps "
        f"({data['pipeline'].get('model')} model; longest gap {busy['longest_gap_s'] * 1000:.0f} ms)")))
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_proof.json"), help="the report (JSON)")
    parser.add_argument("--dry-run", action="store_true", help="on CPU, the tiny model only (no full-size build)")
    parser.add_argument("--budget-s", type=float, help="start no step after this many seconds (default 240; "
                        "dry run 900)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="the sections to run (comma list; default all)")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="carried wheels (default .whl/)")
    parser.add_argument("--tiny-model", help="a built tiny model's directory (default: build one in a temp dir)")
    parser.add_argument("--recipe", default="reference-v1", help="the timed sections' recipe (default reference-v1)")
    parser.add_argument("--size", type=int, default=1024, help="the timed sections' input side (default 1024)")
    parser.add_argument("--steps", default="10,28", help="latency step counts (default 10,28)")
    parser.add_argument("--repeats", type=int, help="latency runs per step count (default 3; dry run 1)")
    parser.add_argument("--determinism-steps", type=int, help="default 10, the validator's (dry run 2)")
    parser.add_argument("--reference-cases", type=int, help="golden cases on the tiny model (default all)")
    parser.add_argument("--reference-steps", type=int, default=10, help="steps of the full-size payloads")
    parser.add_argument("--pipeline-jobs", type=int, default=6, help="queued jobs for the busy fraction")
    parser.add_argument("--pipeline-steps", type=int, default=10)
    parser.add_argument("--callback-jobs", type=int, default=3)
    parser.add_argument("--callback-steps", type=int, default=2)
    parser.add_argument("--fresh-child", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    install_carried_wheels(args.wheels)
    from kontext.process import prepare

    prepare("WARNING")  # PYTHONHASHSEED=0 (re-executing when unset) and the cuBLAS workspace before CUDA starts
    if args.fresh_child:
        fresh_child(args.fresh_child)
        return
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("cannot start: no CUDA device here; --dry-run runs the same code path on CPU")
    only = tuple(section for section in SECTIONS if section in args.only.split(",") or section == "environment")
    plan = Plan(dry_run=args.dry_run, budget_s=args.budget_s or (900.0 if args.dry_run else 240.0),
                recipe=args.recipe, size=args.size, latency_steps=tuple(int(s) for s in args.steps.split(",")),
                repeats=args.repeats or (1 if args.dry_run else 3),
                determinism_steps=args.determinism_steps or (2 if args.dry_run else 10),
                reference_cases=args.reference_cases, only=only,
                reference_steps=args.reference_steps, pipeline_jobs=args.pipeline_jobs,
                pipeline_steps=args.pipeline_steps, callback_jobs=args.callback_jobs,
                callback_steps=args.callback_steps)
    report = Report(args.out, plan)
    Proof(plan, "cpu" if args.dry_run else "cuda", report, args.tiny_model).run()
    for section, line in summary(report.data):
        print(f"{section:<12} {line}")
    print(f"wrote {args.out} in {report.data['wall_s']} s")


if __name__ == "__main__":
    main()
