"""The OpenAPI 3.1 document of every door, with its schemas generated from the protocol models."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from kontext import __version__
from protocol import EditAccepted, EditRequest, ErrorBody, StatusRecord

_REF = "#/components/schemas/{model}"


def _json(model: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}}}


def _error(description: str) -> dict[str, Any]:
    return _json("ErrorBody", description)


_PNG = {"description": "The edited image (headers X-Job-ID, X-Status, X-Seed, X-Image-SHA256, X-Recipe).",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}
_OBJECT = {"application/json": {"schema": {"type": "object"}}}
_BAD_REQUEST = ("Malformed JSON, a body that cannot be read (bad Content-Encoding or chunks), a bad image or one too "
                "small or narrow to edit, or no usable image source.")
_SLOW_BODY = "The body did not arrive within HTTP_BODY_TIMEOUT_SECONDS."
_UNAVAILABLE = ("Editing disabled, engine failed, queue full, too many bytes being decoded (decoding_busy), deadline "
                "unreachable, or stopping (a waiting /sync/edit: with job_id).")
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(m, "validation") for m in (EditRequest, EditAccepted, StatusRecord, ErrorBody)],
        ref_template=_REF,
    )
    errors_common = {"404": _error("Unknown job."), "410": _error("Job expired (retention).")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "kontext-miner", "version": __version__,
                 "description": "Deterministic FLUX.1-Kontext-dev image editing."},
        "paths": {
            "/": {"get": {"operationId": "root", "responses": {"200": {
                "description": "Reachability: service, door, hotkey, engine state, endpoints.", "content": _OBJECT}}}},
            "/check/{hotkey}": {"get": {
                "operationId": "checkHotkey",
                "parameters": [{"name": "hotkey", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "This miner serves that hotkey.", "content": _OBJECT},
                              "404": _error("Not this miner's hotkey.")},
            }},
            "/capacity": {"get": {"operationId": "capacity", "responses": {
                "200": {"description": "Job type -> whether this miner takes it now (booleans only).",
                        "content": {"application/json": {"schema": {
                            "type": "object", "additionalProperties": {"type": "boolean"}}}}},
                "400": _error("A body that cannot be read (bad Content-Encoding or chunks)."), "408": _error(_SLOW_BODY),
                "401": _error("Signature required (public door)."), "403": _error("Caller not allowed."),
                "503": _error("Too many bytes being decoded (decoding_busy, Retry-After)."),
            }}},
            "/sync/edit": {"post": {
                "operationId": "syncEdit",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": _REF.format(model="EditRequest")}}}},
                "responses": {
                    "200": _PNG,
                    "400": _error(_BAD_REQUEST),
                    "408": _error(_SLOW_BODY),
                    "401": _error("Signature required (public door)."),
                    "403": _error("Caller not allowed (not registered, no validator permit, blacklisted)."),
                    "409": _error("job_id already exists."),
                    "413": _error("Body or image over the limits."),
                    "422": _error("A field is invalid, or the job ran and failed (job_failed, with job_id)."),
                    "503": _error(_UNAVAILABLE),
                    "504": _error("The job did not finish in SYNC_TIMEOUT_SECONDS; it keeps running (job_id)."),
                },
            }},
            "/edit": {"post": {
                "operationId": "submitEdit",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": _REF.format(model="EditRequest")}}}},
                "responses": {
                    "200": _json("EditAccepted", "Job accepted and queued."),
                    "400": _error(_BAD_REQUEST),
                    "408": _error(_SLOW_BODY),
                    "401": _error("Signature required (when enabled)."),
                    "403": _error("Caller not allowed (not registered, no validator permit, blacklisted)."),
                    "409": _error("job_id already exists."),
                    "413": _error("Body or image over the limits."),
                    "422": _error("A field is missing, of the wrong type or out of range."),
                    "503": _error(_UNAVAILABLE),
                },
            }},
            "/edit/status/{job_id}": {"get": {
                "operationId": "editStatus", "parameters": [_JOB_ID],
                "responses": {"200": _json("StatusRecord", "The job's status."), **errors_common},
            }},
            "/edit/result/{job_id}": {"get": {
                "operationId": "editResult", "parameters": [_JOB_ID],
                "responses": {"200": _PNG, "409": _error("Not completed yet, or failed."), **errors_common},
            }},
            "/images/edits/{name}": {"get": {
                "operationId": "editImage",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _PNG, "409": _error("Not completed yet."), **errors_common},
            }},
            "/health": {"get": {"operationId": "health", "responses": {"200": {
                "description": "Engine state, queue depth and job counts.", "content": _OBJECT}}}},
            "/metrics": {"get": {"operationId": "metrics", "responses": {"200": {
                "description": "Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": schemas["$defs"]},
    }
