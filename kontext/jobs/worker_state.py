"""A worker's life as a small state machine: its states, and the moves allowed between them."""

from __future__ import annotations

from enum import Enum


class WorkerState(str, Enum):
    STARTING = "starting"
    """Its engine loads (eager loading); a lazy worker is ready at once and loads on its first job."""
    READY = "ready"
    """Taking jobs."""
    STOPPING = "stopping"
    """No new job; the ones it holds finish within the grace period, or are interrupted."""
    STOPPED = "stopped"
    DEFUNCT = "defunct"
    """Out of the rotation: its engine failed to load, or an edit overran its run deadline."""


MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.DEFUNCT, WorkerState.STOPPING}),
    WorkerState.READY: frozenset({WorkerState.STOPPING, WorkerState.DEFUNCT}),
    WorkerState.DEFUNCT: frozenset({WorkerState.STOPPING}),
    WorkerState.STOPPING: frozenset({WorkerState.STOPPED}),
    WorkerState.STOPPED: frozenset(),
}
