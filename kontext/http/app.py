"""The one app factory: every door (public door, sidecar) is this app with its own gate and identity."""

from __future__ import annotations

import weakref
from typing import AsyncIterator, Iterable, Optional

from aiohttp import web

from kontext.http.body import BODY_RULES, BodyBudget, BodyRules, bounded_bodies
from kontext.http.context import DOOR, GATE, RUNTIME, Door
from kontext.http.errors import ON_ERROR, json_errors
from kontext.http.gate import Gate, OpenGate
from kontext.http.routes import routes
from kontext.runtime import Runtime

__all__ = ["Door", "create_app"]

_BUDGETS: "weakref.WeakKeyDictionary[Runtime, BodyBudget]" = weakref.WeakKeyDictionary()
"""One MAX_DECODING_BYTES budget per runtime: the neuron's two doors share their process's."""


def create_app(
    runtime: Runtime,
    *,
    gate: Optional[Gate] = None,
    door: Door = Door(),
    extra_routes: Iterable[web.AbstractRouteDef] = (),
    manage_runtime: bool = False,
) -> web.Application:
    """An app serving the edit contract through ``runtime``.

    ``gate`` admits the job routes (``POST /edit``, ``POST /sync/edit``, ``GET /capacity`` and
    any ``extra_routes`` such as the synapses); without one every caller is admitted. With
    ``manage_runtime`` the app starts and stops the runtime with itself (tests, benchmarks);
    otherwise the start-up path (``kontext.http.serve``) owns it.
    """
    settings = runtime.settings
    app = web.Application(middlewares=[json_errors, bounded_bodies], client_max_size=settings.max_request_bytes)
    app[RUNTIME] = runtime
    budget = _BUDGETS.setdefault(runtime, BodyBudget(settings.max_decoding_bytes))
    app[BODY_RULES] = BodyRules(budget, settings.http_body_timeout_seconds)
    app[GATE] = gate or OpenGate()
    app[DOOR] = door
    app[ON_ERROR] = runtime.count_rejection
    if manage_runtime:

        async def runtime_ctx(_: web.Application) -> AsyncIterator[None]:
            await runtime.start()
            yield
            await runtime.stop()

        app.cleanup_ctx.append(runtime_ctx)
    app.add_routes(routes)
    app.add_routes(extra_routes)
    return app
