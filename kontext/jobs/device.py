"""The thread an engine's pipeline calls run on: one per device, one call at a time, and a daemon, so that a
CUDA call that never returns cannot keep a process that must restart from exiting."""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")


class DeviceThread:
    """A single daemon thread taking calls in order (``concurrent.futures.ThreadPoolExecutor``'s threads are joined
    at interpreter exit: a hung call would hang the exit)."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Optional[tuple[Callable[[], Any], Future[Any]]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, call: Callable[[], T]) -> T:
        """Run ``call`` on the thread, after the calls submitted before it; await its result."""
        future: Future[T] = Future()
        self._calls.put((call, future))
        return await asyncio.wrap_future(future)

    def submit(self, call: Callable[[], T]) -> "asyncio.Future[T]":
        """``run`` as a future the caller can wait on with a timeout (the call itself cannot be stopped)."""
        future: Future[T] = Future()
        self._calls.put((call, future))
        return asyncio.wrap_future(future)

    def stop(self) -> None:
        """No more calls; the thread ends after the one it runs (if it ever returns)."""
        self._calls.put(None)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the thread to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                future.set_exception(exc)
