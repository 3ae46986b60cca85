"""The sidecar HTTP app: routes that translate between HTTP and the EditService, nothing more."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Awaitable, Callable, Optional

from aiohttp import web
from pydantic import BaseModel, ValidationError

from kontext.errors import InvalidRequest, JobNotFound, invalid_from_validation
from kontext.http.errors import ON_ERROR, json_errors
from kontext.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kontext.http.openapi import openapi_document
from kontext.runtime import Runtime
from kontext.jobs.service import EditService
from kontext.settings import Settings
from protocol import EditRequest

RequestVerifier = Callable[[web.Request, bytes], Awaitable[str]]
"""Checks a signed request; returns the caller's hotkey or raises Unauthorized/Forbidden."""

RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("settings", Settings)
VERIFIER: web.AppKey[RequestVerifier] = web.AppKey("verifier")

JSON_IN_THREAD_BYTES = 256 * 1024
"""Bodies above this size are parsed off the event loop (base64 images can be tens of MB)."""

routes = web.RouteTableDef()


def _service(request: web.Request) -> EditService:
    return request.app[RUNTIME].service


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


async def parse_json_object(body: bytes) -> dict:
    """Bytes -> a JSON object, or a 400 that says what is wrong (large bodies parsed off the loop)."""
    return await asyncio.to_thread(_json_object, body) if len(body) > JSON_IN_THREAD_BYTES else _json_object(body)


async def parse_edit_request(body: bytes) -> EditRequest:
    """Bytes -> ``EditRequest``: 400 for malformed JSON, 422 naming each field for schema errors."""
    data = await parse_json_object(body)
    try:
        return EditRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


@routes.post("/edit")
async def submit_edit(request: web.Request) -> web.Response:
    body = await request.read()
    verifier = request.app.get(VERIFIER)
    if verifier is not None:
        await verifier(request, body)
    edit = await parse_edit_request(body)
    return _json(await _service(request).submit(edit))


@routes.get("/edit/status/{job_id}")
async def edit_status(request: web.Request) -> web.Response:
    return _json(await _service(request).status(request.match_info["job_id"]))


@routes.get("/edit/result/{job_id}")
async def edit_result(request: web.Request) -> web.Response:
    result = await _service(request).result(request.match_info["job_id"])
    return _png(result.png, result.sha256)


@routes.get("/images/edits/{name}")
async def edit_image(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not name.endswith(".png"):
        raise JobNotFound(f"no image {name!r}: image names are <job_id>.png")
    result = await _service(request).result(name[: -len(".png")])
    return _png(result.png, result.sha256)


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).health())


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def _png(png: bytes, sha256: str) -> web.Response:
    headers = {"X-Image-SHA256": sha256, "Cache-Control": "public, max-age=86400, immutable"}
    return web.Response(body=png, content_type="image/png", headers=headers)


def create_app(
    settings: Settings,
    *,
    runtime: Optional[Runtime] = None,
    verifier: Optional[RequestVerifier] = None,
    start_runtime: Optional[bool] = None,
) -> web.Application:
    """The sidecar app.

    Without ``runtime`` the app builds its own. The app starts and stops the runtime with
    itself unless ``start_runtime=False`` (the neuron shares one runtime between two apps).
    """
    app = web.Application(middlewares=[json_errors], client_max_size=settings.max_request_bytes)
    app[SETTINGS] = settings
    if verifier is not None:
        app[VERIFIER] = verifier
    owned = runtime or Runtime(settings)
    app[RUNTIME] = owned
    app[ON_ERROR] = owned.count_rejection
    if start_runtime if start_runtime is not None else runtime is None:

        async def runtime_ctx(_: web.Application) -> AsyncIterator[None]:
            await owned.start()
            yield
            await owned.stop()

        app.cleanup_ctx.append(runtime_ctx)
    app.add_routes(routes)
    return app
