"""Routes of the edit contract: each translates HTTP <-> EditService and holds no rule of its own."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from kontext import __version__
from kontext.errors import JobNotFound, NotFound
from kontext.http.body import release_body
from kontext.http.context import DOOR, RUNTIME, admit, service_of
from kontext.http.gate import Caller
from kontext.http.openapi import openapi_document
from kontext.http.parsing import parse_model
from kontext.jobs.service import ResultImage
from kontext.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from protocol import EditAccepted, EditRequest
from protocol.headers import IMAGE_SHA256_HEADER, JOB_ID_HEADER, RECIPE_HEADER, SEED_HEADER, STATUS_HEADER

routes = web.RouteTableDef()

ENDPOINTS = ("POST /edit", "POST /sync/edit", "GET /capacity", "GET /edit/status/{job_id}",
             "GET /edit/result/{job_id}", "GET /images/edits/{job_id}.png", "GET /check/{hotkey}", "GET /health")


def json_reply(model: BaseModel) -> web.Response:
    return web.json_response(model.model_dump(mode="json"))


def png_reply(result: ResultImage) -> web.Response:
    headers = {
        JOB_ID_HEADER: result.job_id,
        STATUS_HEADER: "completed",
        SEED_HEADER: str(result.seed),
        IMAGE_SHA256_HEADER: result.sha256,
        "Cache-Control": "public, max-age=86400, immutable",
    }
    if result.recipe:
        headers[RECIPE_HEADER] = result.recipe
    return web.Response(body=result.png, content_type="image/png", headers=headers)


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    """The validator's reachability check: 200 with who this is and whether it can edit."""
    door = request.app[DOOR]
    return web.json_response({
        "service": "kontext-miner", "version": __version__, "door": door.name, "hotkey": door.hotkey,
        "engine": service_of(request).engine_state(), "endpoints": list(ENDPOINTS),
    })


@routes.get("/check/{hotkey}")
async def check_hotkey(request: web.Request) -> web.Response:
    hotkey, own = request.match_info["hotkey"], request.app[DOOR].hotkey
    if own is None or hotkey != own:
        raise NotFound(f"hotkey {hotkey} is not served here", fields=[{"field": "hotkey", "message": "not ours"}])
    return web.json_response({"hotkey": own, "ok": True})


@routes.get("/capacity")
async def capacity(request: web.Request) -> web.Response:
    await admit(request)
    return web.json_response(service_of(request).capacity())


@routes.post("/edit")
async def submit_edit(request: web.Request) -> web.Response:
    caller, body = await admit(request)
    return json_reply(await _submit(request, caller, body))


@routes.post("/sync/edit")
async def sync_edit(request: web.Request) -> web.Response:
    """``POST /edit``, then wait for the PNG. A client that goes away does not cancel the job."""
    caller, body = await admit(request)
    job_id = (await _submit(request, caller, body)).job_id
    del body  # neither the body nor the request is held while waiting, nor counted against MAX_DECODING_BYTES
    release_body(request)
    return png_reply(await service_of(request).wait_result(job_id))


async def _submit(request: web.Request, caller: Caller, body: bytes) -> EditAccepted:
    edit = await parse_model(body, EditRequest)
    return await service_of(request).submit(edit, priority=caller.priority)


@routes.get("/edit/status/{job_id}")
async def edit_status(request: web.Request) -> web.Response:
    return json_reply(await service_of(request).status(request.match_info["job_id"]))


@routes.get("/edit/result/{job_id}")
async def edit_result(request: web.Request) -> web.Response:
    return png_reply(await service_of(request).result(request.match_info["job_id"]))


@routes.get("/images/edits/{name}")
async def edit_image(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not name.endswith(".png"):
        raise JobNotFound(f"no image {name!r}: image names are <job_id>.png")
    return png_reply(await service_of(request).result(name.removesuffix(".png")))


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    body = await service_of(request).health()
    door = request.app[DOOR]
    if door.hotkey is not None:
        body["hotkey"] = door.hotkey
    if door.health_extra is not None:
        body.update(door.health_extra())
    return web.json_response(body)


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[RUNTIME].metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})
