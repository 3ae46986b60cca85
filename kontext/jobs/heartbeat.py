"""Workers on other hosts, seen from a door: each worker process publishes its workers every few seconds,
and the doors read them for /health, /capacity and the admission estimate. Beats are stamped and aged by
Redis's clock (``TIME``), so hosts whose clocks disagree still see each other."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, Optional

from kontext.engine.engine import EngineState
from kontext.jobs.admission import Sample
from kontext.jobs.pool import WorkerPool, combined_state

log = logging.getLogger(__name__)

KEY = "kontext:workers"
INTERVAL_SECONDS = 2.0
STALE_AFTER_SECONDS = 3 * INTERVAL_SECONDS
"""A worker not heard from for this long is gone (stopped, or cut off from Redis)."""
FORGET_AFTER_SECONDS = 30 * INTERVAL_SECONDS
"""...and after this long its field is deleted (a killed process never withdraws; names carry host:pid, so
each restart would leave one behind)."""


class Heartbeat:
    """A worker process's side: one hash field per worker, refreshed every INTERVAL_SECONDS."""

    def __init__(self, redis: Any, process: str, pool: WorkerPool) -> None:
        self.redis = redis
        self.process = process
        self.pool = pool
        self.last_error: Optional[str] = None
        self.failing_since: Optional[float] = None

    def fields(self, at: float) -> dict[str, str]:
        return {worker.name: json.dumps({**worker.describe(), "process": self.process, "at": at})
                for worker in self.pool.workers}  # worker names carry their process: unique across hosts

    async def run(self) -> None:
        while True:
            try:
                await self.redis.hset(KEY, mapping=self.fields(await redis_clock(self.redis)))
                if self.last_error is not None:
                    log.info("Redis reachable again after %.0fs", time.time() - (self.failing_since or time.time()))
                self.last_error, self.failing_since = None, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying: the queue and /health say why meanwhile
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                self.failing_since = self.failing_since or time.time()
            await asyncio.sleep(INTERVAL_SECONDS)

    async def withdraw(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.hdel(KEY, *(worker.name for worker in self.pool.workers))


class RemoteWorkers:
    """A door's side: implements the service's ``WorkersView`` from the freshest heartbeats."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._workers: list[dict[str, Any]] = []
        self._refreshed = time.monotonic()

    async def refresh(self) -> None:
        raw = await self.redis.hgetall(KEY)
        now = await redis_clock(self.redis)
        workers = {name: json.loads(value) for name, value in raw.items()}
        self._workers = sorted((w for w in workers.values() if now - w.get("at", 0) <= STALE_AFTER_SECONDS),
                               key=lambda w: (w["process"], w["name"]))
        forgotten = [name for name, w in workers.items() if now - w.get("at", 0) > FORGET_AFTER_SECONDS]
        if forgotten:
            await self.redis.hdel(KEY, *forgotten)
        self._refreshed = time.monotonic()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # Redis away: the last view ages out, capacity goes false
                await self.refresh()
            if self._workers and time.monotonic() - self._refreshed > STALE_AFTER_SECONDS:
                self._workers = []
            await asyncio.sleep(INTERVAL_SECONDS / 2)

    @property
    def state(self) -> EngineState:
        """As ``WorkerPool.state`` over every fresh worker; loading while none has been heard from yet."""
        if not self._workers:
            return EngineState.LOADING
        return combined_state({EngineState(worker["state"]) for worker in self._workers})

    @property
    def error(self) -> Optional[str]:
        if not self._workers:
            return None
        errors = [f"{w['name']}: {w['error']}" for w in self._workers if w.get("error")]
        return "; ".join(errors) or None

    def running(self) -> int:
        """Jobs on a device now."""
        return sum(1 for worker in self._workers if worker.get("current_job"))

    def serving(self) -> int:
        """Fresh workers whose engine is ready and which take jobs (a stopping worker's last beats say not)."""
        return sum(1 for worker in self._workers
                   if worker["state"] == EngineState.READY.value and worker.get("taking_jobs", True))

    def progress(self, job_id: str) -> Optional[tuple[int, int]]:
        return None  # a remote worker's steps are not published; status still says processing

    def running_work(self) -> list[tuple[int, int]]:
        return [(int(steps), int(done)) for w in self._workers for steps, done in w.get("running") or ()]

    def waiting_for_device(self) -> list[str]:
        return [job_id for w in self._workers for job_id in w.get("next_jobs") or ()]

    def edit_samples(self) -> list[Sample]:
        """Every fresh worker's recent edits (steps, seconds, seconds a step): what the doors' estimate is fitted to."""
        return [(int(edit[0]), float(edit[1]), None if len(edit) < 3 or edit[2] is None else float(edit[2]))
                for w in self._workers for edit in w.get("recent_edits") or ()]

    def describe(self) -> dict[str, Any]:
        recipes = sorted({str(w["recipe"]) for w in self._workers if w.get("recipe")})
        return {"state": self.state.value, "error": self.error, "recipe": ", ".join(recipes) or None,
                "workers": self._workers,
                "note": "workers in kontext-worker processes (JOB_BACKEND=redis), from their heartbeats"}


async def redis_clock(redis: Any) -> float:
    """Redis's own time, in epoch seconds: one clock for every host."""
    seconds, microseconds = await redis.time()
    return seconds + microseconds / 1e6
