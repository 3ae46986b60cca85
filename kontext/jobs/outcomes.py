"""What running one job came to, and so what becomes of its queue entry: each case said once, settled in one place
(``Worker.settle``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from kontext.jobs.record import JobRecord


@dataclass(frozen=True)
class Finished:
    """The job ended here (completed or failed), or there was nothing to run (it had ended elsewhere, or was
    swept): the entry is closed."""

    job: Optional[JobRecord] = None


@dataclass(frozen=True)
class Deferred:
    """Not runnable before ``delay`` seconds: its reference still runs, or the store refused a write. The entry is
    closed and the job queued again with that delay, in one step; ``store_retry``: the refused run counted as a
    start, so it is recorded as a store retry (MAX_ATTEMPTS counts only runs cut off by a stopped process)."""

    delay: float
    reason: str
    store_retry: bool = False


@dataclass(frozen=True)
class Requeued:
    """Back to the queue for any worker: this one stops taking jobs, or its engine cannot run them."""

    reason: str


@dataclass(frozen=True)
class Downloading:
    """Its image_url must be downloaded first: the prefetcher holds the entry, and queues the job again (closing
    the entry in the same step) or fails it."""


@dataclass(frozen=True)
class Interrupted:
    """A shutdown cut it off: the job stays ``processing`` and its entry open, so the next start (one host) or
    another worker once the lease lapses (a shared queue) runs it again."""


Outcome = Union[Finished, Deferred, Requeued, Downloading, Interrupted]
