"""Synapse routes of the public door: the edit contract wrapped for bittensor clients, through the same service."""

from __future__ import annotations

import base64

from aiohttp import web

from kontext.http.parsing import parse_model
from kontext.http.context import admit, service_of
from protocol import EditSynapse, ResultSynapse, StatusSynapse

routes = web.RouteTableDef()


@routes.post("/EditSynapse")
async def edit_synapse(request: web.Request) -> web.Response:
    caller, body = await admit(request)
    synapse = await parse_model(body, EditSynapse, what="EditSynapse")
    edit = synapse.model_copy(update={"accepted": None})
    synapse.accepted = await service_of(request).submit(edit, priority=caller.priority)
    return web.json_response(synapse.reply())


@routes.post("/StatusSynapse")
async def status_synapse(request: web.Request) -> web.Response:
    _, body = await admit(request)
    synapse = await parse_model(body, StatusSynapse, what="StatusSynapse")
    synapse.status = await service_of(request).status(synapse.job_id)
    return web.json_response(synapse.model_dump(mode="json"))


@routes.post("/ResultSynapse")
async def result_synapse(request: web.Request) -> web.Response:
    _, body = await admit(request)
    synapse = await parse_model(body, ResultSynapse, what="ResultSynapse")
    result = await service_of(request).result(synapse.job_id)
    synapse.image_b64, synapse.sha256 = base64.b64encode(result.png).decode(), result.sha256
    synapse.recipe = result.recipe
    return web.json_response(synapse.model_dump(mode="json"))
