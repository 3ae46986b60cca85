"""The axon: an aiohttp app serving Edit/Status/Result synapses, signed and gated, via EditService."""

from __future__ import annotations

import base64
from typing import Any, Callable, Optional

from aiohttp import web
from pydantic import BaseModel, ValidationError

from kontext.errors import InvalidRequest, invalid_from_validation
from kontext.http.errors import ON_ERROR, json_errors
from kontext.runtime import Runtime
from kontext.http.app import parse_json_object
from neurons.auth import SignatureVerifier
from neurons.registry import ValidatorRegistry
from protocol import EditSynapse, ResultSynapse, StatusSynapse

RUNTIME = web.AppKey("runtime", Runtime)
VERIFIER = web.AppKey("verifier", SignatureVerifier)
REGISTRY = web.AppKey("registry", ValidatorRegistry)
HEALTH_EXTRA: web.AppKey[Callable[[], dict]] = web.AppKey("health_extra")

MAX_AXON_BODY_BYTES = 32 * 1024 * 1024

routes = web.RouteTableDef()


async def _authenticated(request: web.Request, model: type[BaseModel]) -> tuple[Any, str]:
    """Read the raw body, verify its signature and gate the caller, then parse the synapse."""
    body = await request.read()
    hotkey = await request.app[VERIFIER](request, body)
    data = await parse_json_object(body)
    try:
        return model.model_validate(data), hotkey
    except ValidationError as exc:
        raise invalid_from_validation(exc, what=model.__name__) from None


@routes.post("/EditSynapse")
async def edit_synapse(request: web.Request) -> web.Response:
    synapse, hotkey = await _authenticated(request, EditSynapse)
    priority = request.app[REGISTRY].stake(hotkey)
    edit = synapse.model_copy(update={"accepted": None})
    synapse.accepted = await request.app[RUNTIME].service.submit(edit, priority=priority)
    return web.json_response(synapse.reply())


@routes.post("/StatusSynapse")
async def status_synapse(request: web.Request) -> web.Response:
    synapse, _ = await _authenticated(request, StatusSynapse)
    synapse.status = await request.app[RUNTIME].service.status(synapse.job_id)
    return web.json_response(synapse.model_dump(mode="json"))


@routes.post("/ResultSynapse")
async def result_synapse(request: web.Request) -> web.Response:
    synapse, _ = await _authenticated(request, ResultSynapse)
    result = await request.app[RUNTIME].service.result(synapse.job_id)
    synapse.image_b64, synapse.sha256 = base64.b64encode(result.png).decode(), result.sha256
    return web.json_response(synapse.model_dump(mode="json"))


@routes.post("/{name}")
async def unknown_synapse(request: web.Request) -> web.Response:
    raise InvalidRequest(f"unknown synapse {request.match_info['name']!r}: EditSynapse, StatusSynapse or "
                         "ResultSynapse")


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    body = await request.app[RUNTIME].service.health()
    body["metagraph"] = request.app[REGISTRY].health()
    extra = request.app.get(HEALTH_EXTRA)
    if extra is not None:
        body.update(extra())
    return web.json_response(body)


def create_axon_app(runtime: Runtime, verifier: SignatureVerifier, registry: ValidatorRegistry, *,
                    max_body_bytes: int = MAX_AXON_BODY_BYTES,
                    health_extra: Optional[Callable[[], dict]] = None) -> web.Application:
    """The axon app; the runtime is shared with the sidecar and started by the caller."""
    app = web.Application(middlewares=[json_errors], client_max_size=max_body_bytes)
    app[RUNTIME], app[VERIFIER], app[REGISTRY] = runtime, verifier, registry
    app[ON_ERROR] = runtime.count_rejection
    if health_extra is not None:
        app[HEALTH_EXTRA] = health_extra
    app.add_routes(routes)
    return app
