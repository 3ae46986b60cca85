#!/usr/bin/env python
"""Engine option benchmark for operators (H100) that also runs on CPU with the tiny model (CI).

For each option combination: edit latency p50/p95 at each size and step count, peak VRAM, and
a determinism column (N repeats of the same edit: identical SHA256?). Prints a table and writes
JSON. Figures only; nothing here asserts a speed.

    python scripts/bench_gpu.py --model /models/FLUX.1-Kontext-dev            # the full grid on a GPU
    python scripts/bench_gpu.py --quick                                       # tiny model, CPU, seconds
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def input_png(size: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (size, size))
    image.putdata([((x * 255) // size, (y * 255) // size, 128) for y in range(size) for x in range(size)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def bench_combo(name: str, model: str, sizes: list[int], steps: list[int], repeats: int, device: str) -> dict:
    import torch

    from kontext.engine.acceleration import EngineOptions
    from kontext.engine.engine import EngineConfig, EngineState, KontextEngine
    from kontext.engine.recipe import EditParams

    options = EngineOptions(**COMBOS[name])
    engine = KontextEngine(EngineConfig(model_path=model, device=device, local_files_only=True, options=options))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    engine.load()
    row: dict[str, Any] = {"combo": name, "profile": options.profile(engine.dtype), "memory_mode": engine.memory_mode,
                           "load_s": engine.load_seconds, "cells": {}}
    if engine.state is not EngineState.READY:
        row["error"] = engine.error
        return row
    for size in sizes:
        image = input_png(size)
        for step_count in steps:
            params = EditParams(prompt="add a red hat", seed=42, guidance_scale=2.5, num_inference_steps=step_count,
                                width=size, height=size)
            times, hashes = [], set()
            for _ in range(repeats):
                started = time.perf_counter()
                hashes.add(engine.edit(image, params, max_pixels=1 << 26).sha256)
                times.append(time.perf_counter() - started)
            row["cells"][f"{size}px/{step_count}steps"] = {
                "p50_s": percentile(times, 50), "p95_s": percentile(times, 95), "deterministic": len(hashes) == 1,
            }
    row["peak_vram_gb"] = torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else None
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return row


def print_table(rows: list[dict], baseline: str = "baseline") -> None:
    cells = sorted({cell for row in rows for cell in row["cells"]}, key=lambda c: (int(c.split("px")[0]), c))
    base = next((r for r in rows if r["combo"] == baseline), None)
    header = f"{'combo':<18} {'memory':<13}" + "".join(f" {c + ' p50/p95 (x base)':>34}" for c in cells)
    print(header + f" {'peak VRAM':>10} {'deterministic':>14}")
    for row in rows:
        if "error" in row:
            print(f"{row['combo']:<18} error: {row['error'][:100]}")
            continue
        line = f"{row['combo']:<18} {row['memory_mode']:<13}"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory or hub id (default: build the tiny model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--combos", help=f"comma list from {', '.join(COMBOS)} (default: all that fit the device)")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--steps", default="28,10")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="CI: 64px, 2 steps, 2 repeats, CPU combos")
    parser.add_argument("--json", type=Path, default=Path("bench_gpu.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from kontext.engine import determinism

    determinism.ensure_environment()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.sizes, args.steps, args.repeats = "64", "2", 2
    model = args.model
    if model is None:
        from tools.tiny_kontext import build_tiny_kontext

        model = str(build_tiny_kontext(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny-kontext"))
    names = args.combos.split(",") if args.combos else list(COMBOS if device == "cuda" else CPU_COMBOS)
    sizes, steps = [int(s) for s in args.sizes.split(",")], [int(s) for s in args.steps.split(",")]
    rows = [bench_combo(name, model, sizes, steps, args.repeats, device) for name in names]
    print(f"device: {device} ({torch.cuda.get_device_name() if device == 'cuda' else os.cpu_count()} "
          f"{'' if device == 'cuda' else 'cpus'}), torch {torch.__version__}, model {model}, "
          f"{args.repeats} repeats per cell")
    print_table(rows)
    args.json.write_text(json.dumps({"device": device, "model": model, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
