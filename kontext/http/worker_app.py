"""The small HTTP app of a ``kontext-worker`` process: its /health and /metrics (it takes no jobs over HTTP)."""

from __future__ import annotations

from aiohttp import web

from kontext.http.context import RUNTIME
from kontext.http.errors import json_errors
from kontext.http.routes import metrics
from kontext.runtime import Runtime

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """200 while the process lives; ``redis.reachable`` and each worker's state say whether it works."""
    return web.json_response(request.app[RUNTIME].health())


def create_worker_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[RUNTIME] = runtime
    app.add_routes(routes)
    app.router.add_get("/metrics", metrics)  # the doors' handler: one rendering of the registry
    return app
