"""The one start-up path: runtime, listeners, signals, graceful drain and exit codes, for every entry point."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import ssl
from dataclasses import dataclass, replace
from typing import Any, Coroutine, Optional, Sequence

from aiohttp import web

from kontext.errors import StartupError
from kontext.http.errors import connection_log
from kontext.runtime import Runtime
from kontext.settings import Settings

log = logging.getLogger("kontext.serve")

HANDLER_SHUTDOWN_SECONDS = 5.0
"""After the drain, how long open requests get to answer before their connection closes (a /sync/edit still
waiting answers 503 with its job id within a poll of the store, ``EditService.stopping``)."""


@dataclass(frozen=True)
class Listener:
    """One door on one address; ``sock`` once bound (``bind``)."""

    name: str
    app: web.Application
    host: str
    port: int
    ssl_context: Optional[ssl.SSLContext] = None
    sock: Optional[socket.socket] = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(listeners: Sequence[Listener]) -> list[Listener]:
    """Take every listener's port now, before the model loads or the chain is written to: a port in use is one
    ``StartupError`` naming it, not a failure after minutes of loading."""
    bound = []
    try:
        for listener in listeners:
            bound.append(listener if listener.sock is not None else replace(listener, sock=_socket(listener)))
    except StartupError:
        release(bound)
        raise
    return bound


def release(listeners: Sequence[Listener]) -> None:
    """Close the sockets ``bind`` took (a start that stops before serving gives its ports back)."""
    for listener in listeners:
        if listener.sock is not None:
            listener.sock.close()


def _socket(listener: Listener) -> socket.socket:
    try:
        family = socket.getaddrinfo(listener.host, listener.port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((listener.host, listener.port), family=family, backlog=128)
    except OSError as exc:
        raise StartupError(f"the {listener.name} cannot listen on {listener.host}:{listener.port}: "
                           f"{exc.strerror or exc}") from None


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner of every listener: aiohttp's, with this service's bounds on connections.

    A request's headers must arrive within HTTP_IDLE_TIMEOUT_SECONDS of the connection opening or of its previous
    answer (aiohttp's keep-alive timer closes a connection still waiting for them, idle or half-sent); its body
    within HTTP_BODY_TIMEOUT_SECONDS (``kontext/http/body.py``). A client that goes away does not cancel its
    handler (aiohttp's default): a submit always runs to its end.
    """
    return web.AppRunner(app, access_log=None, shutdown_timeout=HANDLER_SHUTDOWN_SECONDS, logger=connection_log,
                         keepalive_timeout=settings.http_idle_timeout_seconds, handler_cancellation=False)


async def serve(runtime: Runtime, listeners: Sequence[Listener], *, stop: Optional[asyncio.Event] = None) -> None:
    """Bind every listener (if not yet), start the runtime and serve; on SIGTERM/SIGINT (or ``stop``) drain and
    shut down.

    Shutdown: stop accepting jobs (503) while status and results stay served, give the running
    job up to SHUTDOWN_GRACE_SECONDS, answer every ``/sync/edit`` still waiting (503 with its job id; the PNG if
    its job finished meanwhile), close the listeners, then stop the runtime (worker, callbacks, store). A job cut
    off by the grace period stays ``processing`` in the store and runs again at the next start.
    """
    listeners = bind(listeners)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    try:
        await runtime.start()
        for listener in listeners:
            runner = make_runner(listener.app, runtime.settings)
            await runner.setup()
            runners.append(runner)
            await web.SockSite(runner, listener.sock, ssl_context=listener.ssl_context).start()  # type: ignore[arg-type]
            log.info("%s serving on %s", listener.name, listener.url)
        stopping = asyncio.ensure_future(stop.wait())
        restarting = asyncio.ensure_future(runtime.restart.wait())
        await asyncio.wait([stopping, restarting], return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopping, restarting):
            waiter.cancel()
        if runtime.restart.is_set():
            log.error("restarting: %s", runtime.restart_reason)
        grace = runtime.settings.shutdown_grace_seconds
        log.info("stopping: no new jobs; the running one may finish (up to %gs)", grace)
        await runtime.quiesce(grace)
        if runtime.role != "worker":  # a kontext-worker process serves no jobs over HTTP
            runtime.service.stopping = True
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        release(listeners)
        await runtime.stop(grace_seconds=0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if runtime.restart.is_set():
        raise RestartRequired(runtime.restart_reason or "restart required")
    log.info("stopped")


class RestartRequired(RuntimeError):
    """The process stopped so its supervisor restarts it (pm2 restarts a process that exits non-zero)."""


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run an entry point: exit 0 after a graceful stop, 2 with one plain line when it cannot start, 1 when it
    stopped to be restarted (a hung device)."""
    try:
        asyncio.run(main)
    except StartupError as exc:
        logging.getLogger("kontext").error("cannot start: %s", exc)
        raise SystemExit(2) from None
    except RestartRequired as exc:
        logging.getLogger("kontext").error("stopped to be restarted: %s", exc)
        raise SystemExit(1) from None
