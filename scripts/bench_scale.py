#!/usr/bin/env python
"""Scale-out figures on the tiny model (CPU, one torch thread per worker):

1. jobs per second with 1 and with 2 workers, and the ratio (target on 2 cores: >= 1.8);
2. per-job queue overhead, submit to start, on SQLite (one host) and on Redis (door + kontext-worker
   roles sharing a real redis-server), p50/p95.

    python scripts/bench_scale.py [--jobs 12] [--recipe reference-v1] [--overhead-jobs 30] [--json out.json]

Figures are printed, never asserted.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _image() -> str:
    from PIL import Image

    image = Image.new("RGB", (96, 64))
    image.putdata([((x * 5) % 256, (y * 7) % 256, (x * y) % 256) for y in range(64) for x in range(96)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _settings(model: str, data: Path, recipe: str, **extra: Any) -> Any:
    from kontext.settings import Settings

    values: dict[str, Any] = dict(data_dir=data, kontext_model_path=model, kontext_local_files_only=True,
                                  kontext_recipe=recipe, kontext_devices="cpu", kontext_self_check=False,
                                  max_queue=10_000, retention_sweep_seconds=3600)
    return Settings(_env_file=None, **{**values, **extra})  # type: ignore[call-arg]


async def _wait(service: Any, ids: list[str], timeout: float = 600) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [await service.status(job_id) for job_id in ids]
        if all(status.status.finished for status in statuses):
            return statuses
        await asyncio.sleep(0.02)
    raise SystemExit(f"jobs did not finish in {timeout:g}s")


async def _until_serving(pool_of: Any, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = pool_of()
        if pool is not None and pool.serving() >= count:
            return
        if pool is not None and pool.error:
            raise SystemExit(f"an engine failed to load: {pool.error}")
        await asyncio.sleep(0.1)
    raise SystemExit(f"{count} worker(s) not ready in {timeout:g}s")


async def throughput(model: str, workers: int, jobs: int, recipe: str, steps: int) -> float:
    """Jobs per second with ``workers`` CPU engines in one process (threads: torch runs without the GIL)."""
    from kontext.runtime import Runtime
    from protocol import EditRequest

    runtime = Runtime(_settings(model, Path(tempfile.mkdtemp(prefix="bench-scale-")), recipe,
                                kontext_devices=",".join(["cpu"] * workers)))
    await runtime.start()
    try:
        await _until_serving(lambda: runtime.workers, workers)
        image = _image()
        requests = [EditRequest(prompt="add a red hat", seed=i, image_b64=image, num_inference_steps=steps,
                                width=256, height=256) for i in range(jobs)]
        started = time.perf_counter()
        ids = [(await runtime.service.submit(request)).job_id for request in requests]
        statuses = await _wait(runtime.service, ids)
        elapsed = time.perf_counter() - started
        assert all(status.status.value == "completed" for status in statuses), statuses
        return jobs / elapsed
    finally:
        await runtime.stop()


async def overhead(model: str, jobs: int, recipe: str, redis_url: str = "") -> list[float]:
    """Milliseconds from a job's arrival to its start, one job at a time on an idle worker."""
    from kontext.runtime import Runtime
    from protocol import EditRequest

    data = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    extra = {"job_backend": "redis", "redis_url": redis_url} if redis_url else {}
    door = Runtime(_settings(model, data, recipe, **extra))
    worker = Runtime(_settings(model, data / "w", recipe, **extra), role="worker") if redis_url else None
    await door.start()
    if worker is not None:
        await worker.start()
    try:
        await _until_serving(lambda: (worker or door).workers, 1)
        image = _image()
        delays = []
        for index in range(jobs):
            request = EditRequest(prompt="p", seed=index, image_b64=image, num_inference_steps=1, width=64, height=64)
            job_id = (await door.service.submit(request)).job_id
            (status,) = await _wait(door.service, [job_id])
            delays.append((status.started_at - status.queued_at).total_seconds() * 1000)
        return delays
    finally:
        if worker is not None:
            await worker.stop()
        await door.stop()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: build the tiny model in a temp dir)")
    parser.add_argument("--jobs", type=int, default=12, help="jobs per throughput run (default 12)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per throughput job (default 4)")
    parser.add_argument("--recipe", default="kontext-v1", help="kontext-v1 (default: 256x256 outputs) or reference-v1")
    parser.add_argument("--overhead-jobs", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="CI: 2 jobs of 1 step, 3 overhead jobs")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.steps, args.overhead_jobs = 2, 1, 3
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kontext.process import prepare

    prepare("WARNING")  # 1. PYTHONHASHSEED=0 (re-executing when unset) and the cuBLAS workspace, or one line
    model = args.model
    if model is None:  # 2. the tiny model, built offline
        from tools.tiny_kontext import build_tiny_kontext

        model = str(build_tiny_kontext(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny-kontext"))
    # 3. throughput with one and with two workers
    one = asyncio.run(throughput(model, 1, args.jobs, args.recipe, args.steps))
    two = asyncio.run(throughput(model, 2, args.jobs, args.recipe, args.steps))
    # 4. queue overhead on SQLite and on a real Redis
    from tools.redis_server import RedisServer

    sqlite_ms = asyncio.run(overhead(model, args.overhead_jobs, args.recipe))
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-"))).start()
    try:
        redis_ms = asyncio.run(overhead(model, args.overhead_jobs, args.recipe, redis.url))
    finally:
        redis.stop()
    figures = {"cpus": os.cpu_count(), "recipe": args.recipe, "jobs": args.jobs, "jobs_per_s_1_worker": one,
               "jobs_per_s_2_workers": two, "ratio": two / one,
               "sqlite_submit_to_start_ms": {"p50": _p(sqlite_ms, 50), "p95": _p(sqlite_ms, 95)},
               "redis_submit_to_start_ms": {"p50": _p(redis_ms, 50), "p95": _p(redis_ms, 95)}}
    print(f"cpus {os.cpu_count()}, tiny model, recipe {args.recipe}, 256x256, {args.steps} steps, {args.jobs} jobs")
    print(f"1. throughput: 1 worker {one:.2f} jobs/s, 2 workers {two:.2f} jobs/s, ratio {two / one:.2f} "
          "(target >= 1.8 on 2 cores)")
    print(f"2. submit -> start: SQLite p50 {_p(sqlite_ms, 50):.1f} ms / p95 {_p(sqlite_ms, 95):.1f} ms; "
          f"Redis p50 {_p(redis_ms, 50):.1f} ms / p95 {_p(redis_ms, 95):.1f} ms ({args.overhead_jobs} jobs each)")
    print(f"   (median of SQLite {statistics.median(sqlite_ms):.1f} ms, Redis {statistics.median(redis_ms):.1f} ms)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
