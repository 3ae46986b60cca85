"""Admission by deadline: refuse at once a job the queue ahead says would finish too late."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Callable, Optional

from kontext.errors import DeadlineUnreachable
from kontext.jobs.record import JobRecord
from protocol import JobStatus


class AdmissionControl:
    """Estimates a new job's finish as (jobs ahead + 1) x the median of the last edit times / workers ready.

    The validator fails a job whose callback arrives more than 15 s after dispatch; answering
    503 at once lets it send the job to another miner instead. Off without a deadline, and
    silent until the first edit time is known (a cold miner admits everything).
    """

    def __init__(self, deadline_seconds: Optional[float], window: int,
                 median_source: Optional[Callable[[], Optional[float]]] = None) -> None:
        """``median_source``: where the edit times are measured elsewhere (workers on other hosts)."""
        self.deadline_seconds = deadline_seconds
        self.median_source = median_source
        self._times: deque[float] = deque(maxlen=window)

    def record(self, job: JobRecord) -> None:
        """Learn from a finished job: its run time, start to finish."""
        if job.status is JobStatus.COMPLETED and job.started_at is not None and job.finished_at is not None:
            self._times.append(job.finished_at - job.started_at)

    def median_seconds(self) -> Optional[float]:
        if self.median_source is not None:
            return self.median_source()
        return statistics.median(self._times) if self._times else None

    def check(self, jobs_ahead: int, *, workers: int = 1) -> None:
        """Raise ``DeadlineUnreachable`` (with a retry hint) when the estimate passes the deadline."""
        median = self.median_seconds()
        if self.deadline_seconds is None or median is None:
            return
        estimate = (jobs_ahead + 1) * median / max(1, workers)
        if estimate > self.deadline_seconds:
            retry = max(1, math.ceil(estimate - self.deadline_seconds))
            raise DeadlineUnreachable(
                f"{jobs_ahead} job(s) ahead at about {median:.1f}s each: this job would finish in about "
                f"{estimate:.0f}s, past the {self.deadline_seconds:g}s deadline; send it elsewhere or retry later",
                retry_after=retry,
            )
