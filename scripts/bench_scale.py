#!/usr/bin/env python
"""Scale-out figures on the tiny model (CPU, one torch thread per worker):

1. jobs per second with 1 and with 2 workers, and the ratio (target on 2 cores: >= 1.8);
2. per-job queue overhead, submit to start, on SQLite (one host) and on Redis (door + kontext-worker
   roles sharing a real redis-server), p50/p95.

    python scripts/bench_scale.py [--jobs 12] [--recipe reference-v1] [--overhead-jobs 30] [--json out.json]

With --busy, instead: the engine busy fraction of a queue of jobs through the real worker (pipeline-call
seconds over the span from the first call's start to the last one's end; target >= 0.97 on 2 cores):

    python scripts/bench_scale.py --busy [--jobs 6] [--steps 10] [--size 1024] [--recipe reference-v1]

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench import pattern_png, percentile, photo_png, tiny_model  # noqa: E402
from tools.service_runs import busy_fraction_of_a_queue, service_settings, until_serving, wait_finished  # noqa: E402


async def throughput(model: str, workers: int, jobs: int, recipe: str, steps: int) -> float:
    """Jobs per second with ``workers`` CPU engines in one process (threads: torch runs without the GIL)."""
    import base64

    from kontext.runtime import Runtime
    from protocol import EditRequest

    runtime = Runtime(service_settings(model, Path(tempfile.mkdtemp(prefix="bench-scale-")), recipe,
                                       kontext_devices=",".join(["cpu"] * workers)))
    await runtime.start()
    try:
        await until_serving(lambda: runtime.workers, workers)
        image = base64.b64encode(pattern_png()).decode()
        requests = [EditRequest(prompt="add a red hat", seed=i, image_b64=image, num_inference_steps=steps,
                                width=256, height=256) for i in range(jobs)]
        started = time.perf_counter()
        ids = [(await runtime.service.submit(request)).job_id for request in requests]
        statuses = await wait_finished(runtime.service, ids)
        elapsed = time.perf_counter() - started
        assert all(status.status.value == "completed" for status in statuses), statuses
        return jobs / elapsed
    finally:
        await runtime.stop()


async def overhead(model: str, jobs: int, recipe: str, redis_url: str = "") -> list[float]:
    """Milliseconds from a job's arrival to its start, one job at a time on an idle worker."""
    import base64

    from kontext.runtime import Runtime
    from protocol import EditRequest

    data = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    extra = {"job_backend": "redis", "redis_url": redis_url} if redis_url else {}
    door = Runtime(service_settings(model, data, recipe, **extra))
    worker = Runtime(service_settings(model, data / "w", recipe, **extra), role="worker") if redis_url else None
    await door.start()
    if worker is not None:
        await worker.start()
    try:
        await until_serving(lambda: (worker or door).workers, 1)
        image = base64.b64encode(pattern_png()).decode()
        delays = []
        for index in range(jobs):
            request = EditRequest(prompt="p", seed=index, image_b64=image, num_inference_steps=1, width=64, height=64)
            job_id = (await door.service.submit(request)).job_id
            (status,) = await wait_finished(door.service, [job_id])
            delays.append((status.started_at - status.queued_at).total_seconds() * 1000)
        return delays
    finally:
        if worker is not None:
            await worker.stop()
        await door.stop()


def busy(model: str, args: argparse.Namespace) -> None:
    """The engine busy fraction of ``--jobs`` queued jobs through the real worker, printed (and written)."""
    settings = service_settings(model, Path(tempfile.mkdtemp(prefix="bench-busy-")), args.recipe)
    figures = asyncio.run(busy_fraction_of_a_queue(settings, photo_png(args.size, args.size), jobs=args.jobs,
                                                   steps=args.steps, size=args.size))
    print(f"cpus {os.cpu_count()}, tiny model, recipe {args.recipe}, {args.size}x{args.size} input, "
          f"{args.steps} steps, {args.jobs} queued jobs ({figures['completed']} completed)")
    print(f"engine busy fraction {figures['busy_fraction']:.3f} (pipeline {figures['pipeline_s']:.2f} s of "
          f"{figures['span_s']:.2f} s; longest gap {figures['longest_gap_s'] * 1000:.0f} ms; "
          f"{figures['jobs_per_s']:.3f} jobs/s)  target >= 0.97 on 2 cores")
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "recipe": args.recipe, "size": args.size,
                                         **figures}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: build the tiny model in a temp dir)")
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (default 12; --busy: 6)")
    parser.add_argument("--steps", type=int, help="denoising steps per job (default 4; --busy: 10, the validator's)")
    parser.add_argument("--recipe", help="kontext-v1 (default: 256x256 outputs) or reference-v1 (--busy's default)")
    parser.add_argument("--overhead-jobs", type=int, default=30)
    parser.add_argument("--busy", action="store_true", help="measure the engine busy fraction instead")
    parser.add_argument("--size", type=int, default=1024, help="--busy: the input's side (reference-v1 always "
                        "makes 1024x1024; kontext-v1 makes this size)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="CI: 2 jobs of 1 step, 3 overhead jobs")
    args = parser.parse_args()
    args.jobs = args.jobs or (6 if args.busy else 12)
    args.steps = args.steps or (10 if args.busy else 4)
    args.recipe = args.recipe or ("reference-v1" if args.busy else "kontext-v1")
    if args.quick:
        args.jobs, args.steps, args.overhead_jobs = 2, 1, 3
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kontext.process import prepare

    prepare("WARNING")  # 1. PYTHONHASHSEED=0 (re-executing when unset) and the cuBLAS workspace, or one line
    model = tiny_model(args.model)  # 2. the tiny model, built offline unless given
    if args.busy:
        busy(model, args)
        return
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
    p = percentile
    figures = {"cpus": os.cpu_count(), "recipe": args.recipe, "jobs": args.jobs, "jobs_per_s_1_worker": one,
               "jobs_per_s_2_workers": two, "ratio": two / one,
               "sqlite_submit_to_start_ms": {"p50": p(sqlite_ms, 50), "p95": p(sqlite_ms, 95)},
               "redis_submit_to_start_ms": {"p50": p(redis_ms, 50), "p95": p(redis_ms, 95)}}
    print(f"cpus {os.cpu_count()}, tiny model, recipe {args.recipe}, 256x256, {args.steps} steps, {args.jobs} jobs")
    print(f"1. throughput: 1 worker {one:.2f} jobs/s, 2 workers {two:.2f} jobs/s, ratio {two / one:.2f} "
          "(target >= 1.8 on 2 cores)")
    print(f"2. submit -> start: SQLite p50 {p(sqlite_ms, 50):.1f} ms / p95 {p(sqlite_ms, 95):.1f} ms; "
          f"Redis p50 {p(redis_ms, 50):.1f} ms / p95 {p(redis_ms, 95):.1f} ms ({args.overhead_jobs} jobs each)")
    print(f"   (median of SQLite {statistics.median(sqlite_ms):.1f} ms, Redis {statistics.median(redis_ms):.1f} ms)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
