"""Request bodies -> protocol models: the one parser every door uses (public door, sidecar, synapses)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kontext.errors import InvalidRequest, invalid_from_validation

Model = TypeVar("Model", bound=BaseModel)

JSON_IN_THREAD_BYTES = 256 * 1024
"""Bodies above this size are parsed off the event loop (base64 images can be tens of MB)."""


def loads_object(body: bytes) -> dict[str, Any]:
    """Bytes -> a JSON object, or a 400 that says what is wrong.

    Besides malformed JSON, the standard library raises ``RecursionError`` for nesting about
    1,000 deep and ``ValueError`` for integer literals over 4,300 digits; both are the caller's
    fault and get the same 400.
    """
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid JSON: it is not UTF-8 text") from None
    except RecursionError:
        raise InvalidRequest("request body is not acceptable JSON: it is nested too deeply") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise InvalidRequest(f"request body is not acceptable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


async def parse_object(body: bytes) -> dict[str, Any]:
    """``loads_object``, off the event loop for large bodies."""
    if len(body) > JSON_IN_THREAD_BYTES:
        return await asyncio.to_thread(loads_object, body)
    return loads_object(body)


async def parse_model(body: bytes, model: type[Model], *, what: str = "request body") -> Model:
    """Bytes -> ``model``: 400 for malformed JSON, 422 naming each field for schema errors."""
    data = await parse_object(body)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_validation(exc, what=what) from None
    except RecursionError:  # a deeply nested value inside an otherwise valid field
        raise InvalidRequest(f"{what} is not acceptable: a value is nested too deeply") from None
