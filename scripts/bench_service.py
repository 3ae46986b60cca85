#!/usr/bin/env python
"""Service overhead benchmark: engine vs bare pipeline, queue overhead, status latency under load.

Prints three figures from one run (tiny model by default, or --model PATH):
  1. engine time / bare ``pipe(...)`` time (ratio; the target is <= 1.05),
  2. submit-to-completed time beyond the engine's own time (p50/p95, ms),
  3. status requests per second and their p99 latency while a job runs (the target is < 20 ms).
No assertion: these are figures to read and compare, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench import percentile, tiny_model  # noqa: E402


def test_image(size: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (size, size))
    image.putdata([((x * 7) % 256, (y * 5) % 256, (x + y) % 256) for y in range(size) for x in range(size)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bench_engine_vs_bare(model: str, recipe_id: str, image: bytes, params, repeats: int) -> tuple[float, float]:
    """Median seconds of the engine's edit and of a bare pipeline call with the same arguments."""
    import torch
    from diffusers import FluxKontextPipeline

    from kontext.engine.engine import EngineConfig, KontextEngine

    engine = KontextEngine(EngineConfig(model_path=model, recipe=recipe_id, device="cpu", local_files_only=True))
    engine.load()
    recipe = engine.recipe
    pipe = FluxKontextPipeline.from_pretrained(model, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prepared = recipe.preprocess(image, max_pixels=4096 * 4096)
    engine_times, bare_times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.edit(image, params, max_pixels=4096 * 4096)
        engine_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(**recipe.pipeline_kwargs(prepared, params, recipe.seed(params.seed, "cpu")))
        bare_times.append(time.perf_counter() - started)
    return statistics.median(engine_times), statistics.median(bare_times)


async def bench_service(model: str, recipe_id: str, image: bytes, jobs: int, poll_seconds: float,
                        long_steps: int) -> dict:
    import aiohttp
    from aiohttp import web

    from kontext.engine.engine import EngineConfig, KontextEngine
    from kontext.runtime import Runtime
    from kontext.settings import Settings
    from kontext.http.app import create_app

    data_dir = Path(tempfile.mkdtemp(prefix="bench-service-"))
    settings = Settings(_env_file=None, data_dir=data_dir, kontext_model_path=model, kontext_recipe=recipe_id,
                        kontext_devices="cpu", kontext_local_files_only=True, miner_server_host="127.0.0.1")
    engine = KontextEngine(EngineConfig.from_settings(settings))
    engine_seconds: dict[str, float] = {}
    inner_edit = engine.edit

    def timed_edit(*args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return inner_edit(*args, **kwargs)
        finally:
            engine_seconds[str(len(engine_seconds))] = time.perf_counter() - started

    engine.edit = timed_edit  # type: ignore[method-assign]
    runtime = Runtime(settings, engine=engine)
    runner = web.AppRunner(create_app(runtime, manage_runtime=True), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    base = f"http://127.0.0.1:{port}"
    body = {"prompt": "add a hat", "image_b64": base64.b64encode(image).decode(), "width": 64, "height": 64,
            "num_inference_steps": 2}
    overheads: list[float] = []
    async with aiohttp.ClientSession() as session:
        while (await (await session.get(f"{base}/health")).json())["services"]["kontext_edit"] != "ready":
            await asyncio.sleep(0.05)
        for seed in range(jobs + 1):
            started = time.perf_counter()
            job_id = (await (await session.post(f"{base}/edit", json={**body, "seed": seed})).json())["job_id"]
            while (await (await session.get(f"{base}/edit/status/{job_id}")).json())["status"] != "completed":
                await asyncio.sleep(0.002)
            total = time.perf_counter() - started
            if seed:  # the first job warms caches
                overheads.append(total - engine_seconds[str(len(engine_seconds) - 1)])

        long_job = (await (await session.post(f"{base}/edit", json={**body, "seed": 999, "width": 256, "height": 256,
                                                                   "num_inference_steps": long_steps})).json())
        while (await (await session.get(f"{base}/edit/status/{long_job['job_id']}")).json())["status"] == "queued":
            await asyncio.sleep(0.005)
        latencies: list[float] = []
        deadline = time.perf_counter() + poll_seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await (await session.get(f"{base}/edit/status/{long_job['job_id']}")).json()
            latencies.append(time.perf_counter() - started)
            if status["status"] != "processing":
                break
        still_running = status["status"] == "processing"
    await runner.cleanup()
    return {
        "overhead_ms_p50": percentile(overheads, 50) * 1000,
        "overhead_ms_p95": percentile(overheads, 95) * 1000,
        "status_rps": len(latencies) / sum(latencies),
        "status_ms_p99": percentile(latencies, 99) * 1000,
        "status_samples": len(latencies),
        "job_still_running_at_end": still_running,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: build the tiny model in a temp dir)")
    parser.add_argument("--repeats", type=int, default=5, help="engine/bare pairs (default 5)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs for the overhead figure (default 20)")
    parser.add_argument("--poll-seconds", type=float, default=3.0, help="status polling window (default 3)")
    parser.add_argument("--long-steps", type=int, default=60, help="steps of the job polled against")
    parser.add_argument("--recipe", default="kontext-v1",
                        help="recipe (default kontext-v1: 64x64 outputs keep the run short; reference-v1 always "
                        "makes the pipeline's default 1024x1024)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from kontext.process import prepare
    from kontext.engine.recipes import EditParams

    prepare("WARNING")  # PYTHONHASHSEED=0 (re-executing when unset) and the cuBLAS workspace, or one line
    model = tiny_model(args.model)
    image = test_image(64)
    params = EditParams(prompt="add a hat", seed=1, guidance_scale=2.5, num_inference_steps=4, width=64, height=64)
    engine_s, bare_s = bench_engine_vs_bare(model, args.recipe, image, params, args.repeats)
    service = asyncio.run(bench_service(model, args.recipe, image, args.jobs, args.poll_seconds, args.long_steps))
    figures = {"engine_s": engine_s, "bare_pipe_s": bare_s, "engine_over_bare": engine_s / bare_s, **service}
    print(f"1. engine / bare pipe(...)        : {figures['engine_over_bare']:.3f}  "
          f"({engine_s * 1000:.1f} ms vs {bare_s * 1000:.1f} ms, median of {args.repeats})  target <= 1.05")
    print(f"2. submit->completed beyond engine: p50 {service['overhead_ms_p50']:.1f} ms, "
          f"p95 {service['overhead_ms_p95']:.1f} ms over {args.jobs} jobs")
    print(f"3. status while a job runs        : {service['status_rps']:.0f} req/s, "
          f"p99 {service['status_ms_p99']:.2f} ms over {service['status_samples']} requests  target p99 < 20 ms")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
