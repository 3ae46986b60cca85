"""What the service reads of the workers, wherever they run: ``WorkerPool`` in this process, ``RemoteWorkers``
(their heartbeats) on a shared queue."""

from __future__ import annotations

from typing import Any, Optional, Protocol

from kontext.engine.engine import EngineState


class WorkersView(Protocol):
    """What the service reads of the workers (``WorkerPool`` in this process, ``RemoteWorkers`` on a shared queue):
    their engines' state, how many serve and run, the jobs they took ahead, and a running job's progress."""

    @property
    def state(self) -> EngineState: ...
    @property
    def error(self) -> Optional[str]: ...
    def running(self) -> int:
        """Jobs on a device now."""
        ...
    def running_work(self) -> list[tuple[int, int]]:
        """(steps, steps done) of each job a worker holds (on the device, or taken and prepared ahead)."""
        ...
    def waiting_for_device(self) -> list[str]:
        """Jobs a worker took ahead that have not reached the device: still queued, next in line, in order."""
        ...
    def serving(self) -> int: ...
    def edit_samples(self) -> list[tuple[int, float, Optional[float]]]:
        """Recent edits (steps, seconds, seconds a step): what the admission estimate is fitted to."""
        ...
    def progress(self, job_id: str) -> Optional[tuple[int, int]]: ...
    def describe(self) -> dict[str, Any]: ...
