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

Sample = tuple[int, float, Optional[float]]
"""One finished edit: (steps, seconds from its start to its end, seconds a denoising step took, where measured)."""


@dataclass(frozen=True)
class EditTimeModel:
    """seconds = fixed + per_step x steps."""

    fixed: float
    per_step: float

    def seconds(self, steps: int, done: int = 0) -> float:
        """A job of ``steps`` steps with ``done`` of them behind it: what it has left."""
        return (self.fixed if done == 0 else 0.0) + self.per_step * max(0, steps - done)


def fit(samples: Sequence[Sample]) -> Optional[EditTimeModel]:
    """The time a step takes, as measured between the steps of recent edits, and the rest as the fixed part (text
    encoding, the VAE, the PNG). Without step timings: least squares where the samples hold two step counts or more,
    else proportional to the steps. None without samples."""
    if not samples:
        return None
    per_steps = [per_step for _, _, per_step in samples if per_step is not None]
    if per_steps:
        per_step = statistics.median(per_steps)
        return EditTimeModel(statistics.median(max(0.0, t - per_step * s) for s, t, _ in samples), per_step)
    if len({steps for steps, _, _ in samples}) >= 2:
        slope, intercept = statistics.linear_regression([float(s) for s, _, _ in samples], [t for _, t, _ in samples])
        if slope > 0:
            if intercept >= 0:
                return EditTimeModel(intercept, slope)
            return EditTimeModel(0.0, statistics.median(t / s for s, t, _ in samples))  # noisy: through the origin
    return EditTimeModel(0.0, statistics.median(t / max(1, s) for s, t, _ in samples))


class AdmissionControl:
    """Learns edit times (``record``) and refuses what would be late (``check``)."""

    def __init__(self, deadline_seconds: Optional[float], window: int, *, margin_seconds: float = 0.0,
                 samples_source: Optional[Callable[[], Iterable[Sample]]] = None) -> None:
        """``samples_source``: the workers' recent edits, with their step timings (this process's, or other hosts'
        from their heartbeats)."""
        self.deadline_seconds = deadline_seconds or None
        self.margin_seconds = margin_seconds
        self.samples_source = samples_source
        self._samples: deque[Sample] = deque(maxlen=window)

    def record(self, job: JobRecord) -> None:
        """Learn from a finished job whose steps were not timed: its steps and its run time, start to finish."""
        if job.status is JobStatus.COMPLETED and job.started_at is not None and job.finished_at is not None:
            self._samples.append((job.request.num_inference_steps, job.finished_at - job.started_at, None))

    def model(self) -> Optional[EditTimeModel]:
        timed = list(self.samples_source()) if self.samples_source is not None else []
        return fit(timed or list(self._samples))

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
