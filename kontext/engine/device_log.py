"""When an engine's device was busy: its recent pipeline calls, and the busy fraction they give."""

from __future__ import annotations

from collections import deque
from typing import Iterable

DEVICE_LOG_CALLS = 256
"""Pipeline calls an engine remembers (enough for any benchmark's queue; a long-running miner forgets the rest)."""

Interval = tuple[float, float]
"""(start, end) of one pipeline call, in ``time.perf_counter()`` seconds."""


def device_log() -> deque[Interval]:
    """An empty log. Appending from the engine's thread while another thread copies it is safe (deque)."""
    return deque(maxlen=DEVICE_LOG_CALLS)


def busy_fraction(intervals: Iterable[Interval]) -> float:
    """Pipeline-call seconds over the wall seconds from the first call's start to the last one's end.

    1.0 means the device never waited between calls. 0.0 for no interval (nothing ran). The calls of one
    engine never overlap (its device lock), so their durations add up without double counting.
    """
    calls = list(intervals)
    if not calls:
        return 0.0
    span = max(end for _, end in calls) - min(start for start, _ in calls)
    busy = sum(end - start for start, end in calls)
    return busy / span if span > 0 else 1.0
