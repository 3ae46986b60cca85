#!/usr/bin/env python
"""Engine option benchmark for operators (H100) that also runs on CPU with the tiny model (CI).

For each option combination: edit latency p50/p95 at each size and step count, load time, peak
VRAM, and a determinism column (N repeats of the same edit: identical SHA256?). Prints a table
and writes JSON. Figures only; nothing here asserts a speed.

    python scripts/bench_gpu.py --model /models/FLUX.1-Kontext-dev            # the full grid on a GPU
    python scripts/bench_gpu.py --synthetic-full                              # no weights needed: see below
    python scripts/bench_gpu.py --quick                                       # tiny model, CPU, seconds

--synthetic-full builds FLUX.1-Kontext-dev's real architecture at full size with seeded random
weights directly on the GPU in bf16 (tools/synthetic_kontext.py) and hands it to the engine, so
latency and VRAM are those of the real model without downloading it (the images are noise). With
--quick it builds a few narrow layers of the same family instead, for CPU tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench import Loader, gradient_png, percentile, synthetic_fit_problem, timed, tiny_model  # noqa: E402

COMBOS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "math-attention": {"attention_backend": "_native_math"},
    "flash-attention": {"attention_backend": "flash"},
    "compile": {"compile": True},
    "first-block-cache": {"first_block_cache": 0.08},
    "fp8-layerwise": {"fp8_layerwise": True},
    "model-offload": {"memory_mode": "model_offload"},
    "group-offload": {"memory_mode": "group_offload"},
}
CPU_COMBOS = ("baseline", "math-attention", "first-block-cache", "fp8-layerwise", "group-offload")
"""What runs without CUDA (flash attention, compile warm-up cost and model offload need a GPU)."""
def bench_combo(name: str, model: str, recipe: str, sizes: list[int], steps: list[int], repeats: int, device: str,
                loader: Optional[Loader] = None) -> dict:
    """One fresh engine with this combo's options; its memory is given back before the next combo."""
    import torch

    from kontext.engine.acceleration import EngineOptions
    from kontext.engine.engine import EngineConfig, EngineState, KontextEngine
    from kontext.engine.recipes import EditParams

    options = EngineOptions(**COMBOS[name])
    build_s: list[float] = []
    engine = KontextEngine(EngineConfig(model_path=model, recipe=recipe, device=device, local_files_only=True,
                                        options=options), loader=timed(loader, build_s) if loader else None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    engine.load()
    row: dict[str, Any] = {"combo": name, "recipe": recipe, "profile": options.profile(engine.dtype),
                           "memory_mode": engine.memory_mode,
                           "load_s": engine.load_seconds, "build_s": build_s[0] if build_s else None, "cells": {}}
    try:
        if engine.state is not EngineState.READY:
            row["error"] = engine.error
            return row
        for size in sizes:
            image = gradient_png(size)
            for step_count in steps:
                params = EditParams(prompt="add a red hat", seed=42, guidance_scale=2.5,
                                    num_inference_steps=step_count, width=size, height=size)
                times, hashes, output = [], set(), ""
                for _ in range(repeats):
                    started = time.perf_counter()
                    out = engine.edit(image, params, max_pixels=1 << 26)
                    times.append(time.perf_counter() - started)
                    hashes.add(out.sha256)
                    output = f"{out.width}x{out.height}"
                row["cells"][f"{size}px/{step_count}steps"] = {
                    "p50_s": percentile(times, 50), "p95_s": percentile(times, 95), "deterministic": len(hashes) == 1,
                    "output": output, "sha256": sorted(hashes)[0],
                }
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the other combos still run
        row["error"] = f"{type(exc).__name__}: {exc}"[:1000]
    finally:
        row["peak_vram_gb"] = torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else None
        row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        engine.pipe = None
        _release_memory(torch, device, compiled=options.compile)
    return row


def _release_memory(torch: Any, device: str, compiled: bool) -> None:
    """Drop compiled graphs and cached blocks, so the next combo starts from an empty card."""
    if compiled:
        torch.compiler.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def print_table(rows: list[dict], baseline: str = "baseline") -> None:
    cells = sorted({cell for row in rows for cell in row["cells"]}, key=lambda c: (int(c.split("px")[0]), c))
    base = next((r for r in rows if r["combo"] == baseline), None)
    header = f"{'combo':<18} {'memory':<13} {'load (build)':>16}" + "".join(
        f" {c + ' p50/p95 (x base)':>34}" for c in cells)
    print(header + f" {'peak VRAM':>10} {'deterministic':>14}")
    for row in rows:
        if "error" in row:
            print(f"{row['combo']:<18} error: {row['error'][:100]}")
            continue
        load = f"{row['load_s']:.1f}s" + (f" ({row['build_s']:.1f}s)" if row["build_s"] is not None else "")
        line = f"{row['combo']:<18} {row['memory_mode']:<13} {load:>16}"
        for cell in cells:
            value = row["cells"].get(cell)
            ratio = ""
            if value and base and cell in base["cells"]:
                ratio = f" ({value['p50_s'] / base['cells'][cell]['p50_s']:.2f}x)"
            text = f"{value['p50_s']:.3f}s/{value['p95_s']:.3f}s{ratio}" if value else "-"
            line += f" {text:>34}"
        vram = f"{row['peak_vram_gb']:.1f} GB" if row["peak_vram_gb"] is not None else "n/a (cpu)"
        deterministic = "yes" if all(v["deterministic"] for v in row["cells"].values()) else "NO"
        print(line + f" {vram:>10} {deterministic:>14}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model directory or hub id (default: build the tiny model)")
    source.add_argument("--synthetic-full", action="store_true",
                        help="FLUX.1-Kontext-dev's architecture, full size, random weights, built on the GPU")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--combos", help=f"comma list from {', '.join(COMBOS)} (default: all that fit the device)")
    parser.add_argument("--recipe", help="reference-v1 (default; the output is always the pipeline's default size, "
                        "so --sizes sets the input) or kontext-v1 (--sizes sets the output; the default with --quick)")
    parser.add_argument("--sizes", help="comma list of square sizes (default: 512,1024; synthetic: 1024)")
    parser.add_argument("--steps", default="28,10")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="CI: 64px, 2 steps, 2 repeats, CPU combos; with "
                        "--synthetic-full, a reduced synthetic model")
    parser.add_argument("--json", type=Path, default=Path("bench_gpu.json"))
    args = parser.parse_args()
    args.sizes = args.sizes or ("1024" if args.synthetic_full else "512,1024")
    if args.quick:
        args.sizes, args.steps, args.repeats = "64", "2", 2
    args.recipe = args.recipe or ("kontext-v1" if args.quick else "reference-v1")
    return args


def choose_model(args: argparse.Namespace, device: str) -> tuple[str, Optional[Loader]]:
    """The model's name for the engine, and the loader that builds it (None: the engine's from_pretrained).

    Exits with a one-line message when the full-size synthetic model cannot fit on this machine.
    """
    import torch

    if args.synthetic_full:
        from tools.synthetic_kontext import FULL, FULL_PARAMETERS, QUICK, build_synthetic_kontext

        scale = QUICK if args.quick else FULL
        if scale is FULL:  # (refused before diffusers is imported: the count is kept as a number)
            free = torch.cuda.mem_get_info()[0] if device == "cuda" and torch.cuda.is_available() else None
            problem = synthetic_fit_problem(free, FULL_PARAMETERS * torch.bfloat16.itemsize)
            if problem:
                raise SystemExit(problem)
        return f"synthetic:{scale.name}", lambda dtype, dev: build_synthetic_kontext(scale, dtype, dev)
    if args.model is not None:
        return args.model, None
    return tiny_model(), None


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kontext.process import prepare

    # 1. a deterministic process before torch starts: PYTHONHASHSEED=0 (re-executing when unset), cuBLAS workspace
    prepare("WARNING")
    import torch

    # 2. the device, and the model: a directory, the tiny one, or a synthetic one built by the engine's loader
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, loader = choose_model(args, device)
    # 3. each combo on a fresh engine, one after the other
    names = args.combos.split(",") if args.combos else list(COMBOS if device == "cuda" else CPU_COMBOS)
    sizes, steps = [int(s) for s in args.sizes.split(",")], [int(s) for s in args.steps.split(",")]
    rows = [bench_combo(name, model, args.recipe, sizes, steps, args.repeats, device, loader) for name in names]
    # 4. the table and the JSON
    outputs = sorted({cell["output"] for row in rows for cell in row["cells"].values()})
    print(f"device: {device} ({torch.cuda.get_device_name() if device == 'cuda' else os.cpu_count()} "
          f"{'' if device == 'cuda' else 'cpus'}), torch {torch.__version__}, model {model}"
          f"{' (random weights)' if loader else ''}, recipe {args.recipe} (outputs {', '.join(outputs)}), "
          f"{args.repeats} repeats per cell")
    print_table(rows)
    args.json.write_text(json.dumps({"device": device, "model": model, "recipe": args.recipe, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
