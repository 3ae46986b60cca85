"""The one start-up path: runtime, listeners, signals, graceful drain and exit codes, for every entry point."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass
from typing import Any, Coroutine, Optional, Sequence

from aiohttp import web

from kontext.errors import StartupError
from kontext.http.errors import JsonErrorRunner
from kontext.runtime import Runtime

log = logging.getLogger("kontext.serve")

HANDLER_SHUTDOWN_SECONDS = 5.0
"""After the drain, how long open requests (a /sync/edit still waiting) get before their connection closes."""


@dataclass(frozen=True)
class Listener:
    """One door on one address."""

    name: str
    app: web.Application
    host: str
    port: int
    ssl_context: Optional[ssl.SSLContext] = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"


async def serve(runtime: Runtime, listeners: Sequence[Listener], *, stop: Optional[asyncio.Event] = None) -> None:
    """Start the runtime and every listener; on SIGTERM/SIGINT (or ``stop``) drain and shut down.

    Shutdown: stop accepting jobs (503) while status and results stay served, give the running
    job up to SHUTDOWN_GRACE_SECONDS, close the listeners, then stop the runtime (worker, callbacks,
    store). A job cut off by the grace period stays ``processing`` in the store and runs again at
    the next start.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    runners: list[JsonErrorRunner] = []
    try:
        for listener in listeners:
            runner = JsonErrorRunner(listener.app, access_log=None, shutdown_timeout=HANDLER_SHUTDOWN_SECONDS)
            await runner.setup()
            runners.append(runner)
            try:
                await web.TCPSite(runner, listener.host, listener.port, ssl_context=listener.ssl_context).start()
            except OSError as exc:
                raise StartupError(f"the {listener.name} cannot listen on {listener.host}:{listener.port}: "
                                   f"{exc.strerror or exc}") from None
            log.info("%s serving on %s", listener.name, listener.url)
        await stop.wait()
        grace = runtime.settings.shutdown_grace_seconds
        log.info("stopping: no new jobs; the running one may finish (up to %gs)", grace)
        await runtime.quiesce(grace)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await runtime.stop(grace_seconds=0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run an entry point: exit 0 after a graceful stop, 2 with one plain line when it cannot start."""
    try:
        asyncio.run(main)
    except StartupError as exc:
        logging.getLogger("kontext").error("cannot start: %s", exc)
        raise SystemExit(2) from None
