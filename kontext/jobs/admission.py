"""Admission by deadline: refuse at once a job the work ahead says would call back too late.

The validator fails a job whose callback arrives more than 15 s after dispatch, and counts a refused
dispatch as one failure too; a job accepted late also delays every job behind it. So a job is refused
(503 with a retry hint) only when the estimate says it would miss the deadline:

    finish = (work of the jobs ahead + what the running jobs have left) / workers ready
             + this job's own time + ADMISSION_MARGIN_SECONDS (the callback's upload)

Each job's time is ``fixed + per_step x steps``, fitted to the recent edits, so a mix of step counts is
estimated right. Off without a deadline, and silent until the first edit time is known.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from kontext.errors import DeadlineUnreachable
from kontext.jobs.record import JobRecord
from protocol import JobStatus

Sample = tuple[int, float]
"""One finished edit: (steps, seconds from its start to its end)."""


@dataclass(frozen=True)
class EditTimeModel:
    """seconds = fixed + per_step x steps."""

    fixed: float
    per_step: float

    def seconds(self, steps: int, done: int = 0) -> float:
        """A job of ``steps`` steps with ``done`` of them behind it: what it has left."""
        return (self.fixed if done == 0 else 0.0) + self.per_step * max(0, steps - done)


def fit(samples: Sequence[Sample]) -> Optional[EditTimeModel]:
    """Least squares over the samples where they hold two step counts or more; else proportional to the steps
    (the fixed part cannot be told apart with one step count). None without samples."""
    if not samples:
        return None
    if len({steps for steps, _ in samples}) >= 2:
        slope, intercept = statistics.linear_regression([float(s) for s, _ in samples], [t for _, t in samples])
        if slope > 0:
            if intercept >= 0:
                return EditTimeModel(intercept, slope)
            return EditTimeModel(0.0, statistics.median(t / s for s, t in samples))  # noisy: through the origin
    return EditTimeModel(0.0, statistics.median(t / max(1, s) for s, t in samples))


class AdmissionControl:
    """Learns edit times (``record``) and refuses what would be late (``check``)."""

    def __init__(self, deadline_seconds: Optional[float], window: int, *, margin_seconds: float = 0.0,
                 samples_source: Optional[Callable[[], Iterable[Sample]]] = None) -> None:
        """``samples_source``: where the edit times are measured elsewhere (workers on other hosts)."""
        self.deadline_seconds = deadline_seconds or None
        self.margin_seconds = margin_seconds
        self.samples_source = samples_source
        self._samples: deque[Sample] = deque(maxlen=window)

    def record(self, job: JobRecord) -> None:
        """Learn from a finished job: its steps and its run time, start to finish."""
        if job.status is JobStatus.COMPLETED and job.started_at is not None and job.finished_at is not None:
            self._samples.append((job.request.num_inference_steps, job.finished_at - job.started_at))

    def model(self) -> Optional[EditTimeModel]:
        samples = list(self.samples_source()) if self.samples_source is not None else list(self._samples)
        return fit(samples)

    def check(self, *, steps: int, ahead: Sequence[int], running: Sequence[tuple[int, int]], workers: int) -> None:
        """Raise ``DeadlineUnreachable`` when this job of ``steps`` would finish past the deadline. ``ahead``: the
        steps of each job that runs first (queued, deferred, downloading); ``running``: (steps, steps done) of each
        job being edited; ``workers``: engines ready to take jobs."""
        model = self.model()
        if self.deadline_seconds is None or model is None:
            return
        backlog = sum(model.seconds(s) for s in ahead) + sum(model.seconds(s, done) for s, done in running)
        estimate = backlog / max(1, workers) + model.seconds(steps) + self.margin_seconds
        if estimate > self.deadline_seconds:
            retry = max(1, math.ceil(estimate - self.deadline_seconds))
            raise DeadlineUnreachable(
                f"{len(ahead) + len(running)} job(s) ahead: this job ({steps} steps, about {model.seconds(steps):.1f}s) "
                f"would call back in about {estimate:.0f}s, past the {self.deadline_seconds:g}s deadline; send it "
                "elsewhere or retry later", retry_after=retry)
