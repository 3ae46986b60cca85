"""Measurements through the real service path: a Runtime with its real worker, and a real sidecar on loopback.

The engine busy fraction of a queue of jobs, and request-to-callback overhead beyond the edit's own time."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any, Callable, Optional

from tools.bench import percentile


def service_settings(model: str, data: Path, recipe: str, **extra: Any) -> Any:
    """Settings for a benchmark's Runtime: CPU unless ``extra`` says otherwise, no self-check, a deep queue."""
    from kontext.settings import Settings

    values: dict[str, Any] = dict(data_dir=data, kontext_model_path=model, kontext_local_files_only=True,
                                  kontext_recipe=recipe, kontext_devices="cpu", kontext_self_check=False,
                                  max_queue=10_000, retention_sweep_seconds=3600)
    return Settings(_env_file=None, **{**values, **extra})  # type: ignore[call-arg]


async def wait_finished(service: Any, ids: list[str], timeout: float = 600) -> list[Any]:
    """The jobs' status records once all have finished; SystemExit after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [await service.status(job_id) for job_id in ids]
        if all(status.status.finished for status in statuses):
            return statuses
        await asyncio.sleep(0.02)
    raise SystemExit(f"jobs did not finish in {timeout:g}s")


async def until_serving(pool_of: Callable[[], Any], count: int, timeout: float = 300) -> None:
    """Until ``count`` workers of the pool ``pool_of()`` serve; SystemExit naming a load failure or the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = pool_of()
        if pool is not None and pool.serving() >= count:
            return
        if pool is not None and pool.error:
            raise SystemExit(f"an engine failed to load: {pool.error}")
        await asyncio.sleep(0.1)
    raise SystemExit(f"{count} worker(s) not ready in {timeout:g}s")


def _requests(image: bytes, jobs: int, steps: int, size: Optional[int], first_seed: int = 0) -> list[Any]:
    from protocol import EditRequest

    encoded = base64.b64encode(image).decode()
    return [EditRequest(prompt="add a red hat", seed=first_seed + index, image_b64=encoded, num_inference_steps=steps,
                        width=size, height=size) for index in range(jobs)]


async def busy_fraction_of_a_queue(settings: Any, image: bytes, *, jobs: int, steps: int, size: Optional[int],
                                   engine: Any = None) -> dict[str, Any]:
    """Queue ``jobs`` edits at once on a Runtime with one real worker (around ``engine``, already loaded, or one
    it builds from ``settings``) and read the engine's device log: the busy fraction (pipeline-call seconds over
    the span from the first call's start to the last one's end), the longest gap, the throughput."""
    from kontext.engine.device_log import busy_fraction
    from kontext.runtime import Runtime

    if engine is None:
        runtime = Runtime(settings)
    else:  # loaded already: the worker must not load it again
        runtime = Runtime(settings.model_copy(update={"kontext_load": "lazy"}), engine=engine)
    await runtime.start()
    try:
        await until_serving(lambda: runtime.workers, 1)
        served: Any = runtime.engines[0]  # a KontextEngine: its device log
        requests = _requests(image, jobs, steps, size)
        started = time.perf_counter()
        ids = [(await runtime.service.submit(request)).job_id for request in requests]
        statuses = await wait_finished(runtime.service, ids)
        wall = time.perf_counter() - started
    finally:
        await runtime.stop()
    calls = sorted(call for call in list(served.device_log) if call[0] >= started)
    gaps = [later[0] - earlier[1] for earlier, later in zip(calls, calls[1:])]
    return {"jobs": jobs, "steps": steps, "completed": sum(s.status.value == "completed" for s in statuses),
            "busy_fraction": busy_fraction(calls), "pipeline_calls": len(calls),
            "pipeline_s": sum(end - start for start, end in calls),
            "span_s": calls[-1][1] - calls[0][0] if calls else 0.0,
            "longest_gap_s": max(gaps, default=0.0), "wall_s": wall, "jobs_per_s": jobs / wall}


async def callback_overhead(settings: Any, image: bytes, *, jobs: int, steps: int, size: Optional[int],
                            engine: Any, timeout: float = 600) -> dict[str, Any]:
    """POST each edit to a real sidecar on loopback with a callback URL on loopback, one at a time, and take the
    time from the POST to the callback's arrival beyond the edit's own time (``EditOutput.seconds``). ``engine``
    is loaded already. One job more than ``jobs`` runs first, to warm caches, and is left out."""
    from aiohttp import ClientSession, web

    from kontext.http.app import create_app
    from kontext.runtime import Runtime

    arrived: dict[str, float] = {}
    edit_seconds: list[float] = []
    encode = engine.encode

    def timed_encode(denoised: Any) -> Any:  # every edit ends here, whether the worker calls edit() or the stages
        output = encode(denoised)
        edit_seconds.append(output.seconds)
        return output

    async def receive(request: web.Request) -> web.Response:
        form = await request.post()
        arrived[str(form["job_id"])] = time.perf_counter()
        return web.Response(text="ok")

    receiver = web.Application(client_max_size=64 * 1024 * 1024)
    receiver.router.add_post("/callback", receive)
    settings = settings.model_copy(update={"kontext_load": "lazy", "outbound_allow_private": True,
                                           "miner_server_host": "127.0.0.1"})
    engine.encode = timed_encode
    runners = [web.AppRunner(create_app(Runtime(settings, engine=engine), manage_runtime=True), access_log=None),
               web.AppRunner(receiver, access_log=None)]
    try:
        ports = []
        for runner in runners:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]  # noqa: SLF001
        sidecar, callback_url = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}/callback"
        overheads: list[float] = []
        async with ClientSession() as session:
            for request in _requests(image, jobs + 1, steps, size, first_seed=1000):
                body = request.model_dump(mode="json", exclude_none=True) | {"callback_url": callback_url}
                posted = time.perf_counter()
                async with session.post(f"{sidecar}/edit", json=body) as answer:
                    job_id = (await answer.json())["job_id"]
                deadline = posted + timeout
                while job_id not in arrived:
                    if time.perf_counter() > deadline:
                        raise SystemExit(f"no callback for job {job_id} in {timeout:g}s")
                    await asyncio.sleep(0.001)
                if request.seed > 1000:
                    overheads.append(arrived[job_id] - posted - edit_seconds[-1])
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        del engine.encode  # the engine's own method again
    return {"jobs": jobs, "steps": steps, "overhead_ms_p50": percentile(overheads, 50) * 1000,
            "overhead_ms_max": max(overheads) * 1000, "edit_s_p50": percentile(edit_seconds[1:], 50)}
