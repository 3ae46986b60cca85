"""The small HTTP app of a ``kontext-worker`` process: its /health and /metrics (it takes no jobs over HTTP)."""

from __future__ import annotations

from aiohttp import web

from kontext.http.errors import json_errors
from kontext.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kontext.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """200 while the process lives; ``redis.reachable`` and each worker's state say whether it works."""
    return web.json_response(request.app[RUNTIME].health())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[RUNTIME].metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def create_worker_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[RUNTIME] = runtime
    app.add_routes(routes)
    return app
