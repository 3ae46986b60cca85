"""Every worker of this process, seen as one: what the service, the admission estimate and /health read."""

from __future__ import annotations

import asyncio
from typing import Any, Collection, Optional

from kontext.engine.engine import EngineState
from kontext.jobs.admission import Sample
from kontext.jobs.worker import Worker
from kontext.jobs.worker_state import WorkerState


def combined_state(states: Collection[EngineState]) -> EngineState:
    """Several engines as one: ready if any is ready; loading while one loads; failed only when every one failed."""
    for state in (EngineState.READY, EngineState.LOADING, EngineState.UNLOADED):
        if state in states:
            return state
    return EngineState.FAILED


class WorkerPool:
    """Implements the service's ``WorkersView`` over the workers of this process."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        for worker in workers:
            worker.pool = self

    def start(self, *, eager: bool) -> None:
        for worker in self.workers:
            worker.start(eager=eager)

    async def failed_alone(self, worker: Worker) -> None:
        """``worker``'s engine failed to load. If no worker of this process is left and the queue is its own,
        rather than leave jobs waiting forever, fail each with the reason (a shared queue's jobs wait for the other
        hosts' workers); ``worker`` does it, until the shutdown."""
        if worker.queue.shared or any(other.alive for other in self.workers):
            return
        while worker.state is not WorkerState.STOPPING:
            entry = await worker.queue.get()
            try:
                job = await worker.store.get(entry.job_id)
                if job is not None and not job.status.finished:
                    await worker.finisher.fail(job, f"the edit engine failed to load: {worker.engine.error}")
            finally:
                await worker.queue.done(entry)

    async def drain(self, grace_seconds: float) -> None:
        await asyncio.gather(*(worker.drain(grace_seconds) for worker in self.workers))

    @property
    def state(self) -> EngineState:
        """The engines of the workers still in the rotation, as one (failed when none is)."""
        states = {worker.engine.state for worker in self.workers if worker.state is not WorkerState.DEFUNCT}
        return combined_state(states or {EngineState.FAILED})

    @property
    def error(self) -> Optional[str]:
        errors = [f"{w.name}: {w.engine.error or w.defunct_reason}" for w in self.workers
                  if w.engine.error or w.defunct_reason]
        return "; ".join(errors) or None

    def running(self) -> int:
        """Jobs on a device now."""
        return sum(worker.busy for worker in self.workers)

    def edit_samples(self) -> list[Sample]:
        """Every worker's recent edits, with their step timings: what the admission estimate is fitted to."""
        return [sample for worker in self.workers for sample in worker.recent_edits]

    def running_work(self) -> list[tuple[int, int]]:
        return [work for worker in self.workers for work in worker.running_work()]

    def waiting_for_device(self) -> list[str]:
        return [job_id for worker in self.workers for job_id in worker.waiting_for_device()]

    def serving(self) -> int:
        """Workers ready to take a job now (their engine loaded, not stopping, not defunct)."""
        return sum(worker.serving for worker in self.workers)

    def progress(self, job_id: str) -> Optional[tuple[int, int]]:
        for worker in self.workers:
            current = worker.progress(job_id)
            if current is not None:
                return current
        return None

    def describe(self) -> dict[str, Any]:
        engines = [worker.engine.describe() for worker in self.workers]
        first = dict(engines[0]) if engines else {}
        first["state"] = self.state.value
        first["error"] = self.error
        return {**first, "workers": [worker.describe() for worker in self.workers]}
