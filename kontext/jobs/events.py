"""Wake-ups for code waiting on a job (``POST /sync/edit``) when a worker in this process finishes it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Iterator


class JobEvents:
    """Futures keyed by job id, resolved by ``finished``.

    Only jobs finished in this process wake a waiter at once; waiters also re-read the store
    on a short poll, which covers workers in other processes.
    """

    def __init__(self) -> None:
        self._waiters: defaultdict[str, set[asyncio.Future[None]]] = defaultdict(set)

    def finished(self, job_id: str) -> None:
        for waiter in self._waiters.pop(job_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    @contextlib.contextmanager
    def waiter(self, job_id: str) -> Iterator[asyncio.Future[None]]:
        """Register before reading the store, so a finish between the read and the wait is not missed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].add(future)
        try:
            yield future
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[job_id]
