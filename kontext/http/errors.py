"""One place that turns every failure into a JSON error response (never an HTML page or a bare 500)."""

from __future__ import annotations

import logging
import math
from typing import Awaitable, Callable, NamedTuple, Optional

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from kontext import errors
from kontext.errors import EditError
from protocol import ErrorBody

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ON_ERROR: web.AppKey[Callable[[str], None]] = web.AppKey("on_error")
"""Optional hook told each error code (the runtime counts them as metrics)."""

class ErrorMapping(NamedTuple):
    """How one domain error is answered: HTTP status, public code, and its default ``Retry-After`` (seconds)."""

    status: int
    code: str
    retry_after: Optional[float] = None


ERRORS: dict[type[EditError], ErrorMapping] = {
    errors.InvalidRequest: ErrorMapping(400, "invalid_request"),
    errors.Unauthorized: ErrorMapping(401, "unauthorized"),
    errors.Forbidden: ErrorMapping(403, "forbidden"),
    errors.NotFound: ErrorMapping(404, "not_found"),
    errors.JobNotFound: ErrorMapping(404, "job_not_found"),
    errors.JobConflict: ErrorMapping(409, "job_exists"),
    errors.ResultNotReady: ErrorMapping(409, "result_not_ready"),
    errors.JobExpired: ErrorMapping(410, "job_expired"),
    errors.PayloadTooLarge: ErrorMapping(413, "payload_too_large"),
    errors.ValidationFailed: ErrorMapping(422, "validation_error"),
    errors.JobFailed: ErrorMapping(422, "job_failed"),
    errors.ServiceDisabled: ErrorMapping(503, "edit_disabled"),
    errors.ServiceBusy: ErrorMapping(503, "queue_full", 5),
    errors.DeadlineUnreachable: ErrorMapping(503, "deadline_unreachable", 1),
    errors.ServiceUnavailable: ErrorMapping(503, "service_unavailable"),
    errors.StorageUnavailable: ErrorMapping(503, "storage_unavailable", 30),
    errors.SyncTimeout: ErrorMapping(504, "sync_timeout"),
}
"""Every domain error's answer, in one place (``kontext/errors.py`` knows no HTTP)."""
_UNMAPPED = ErrorMapping(500, "internal_error")


def mapping_of(exc: EditError) -> ErrorMapping:
    """The answer for ``exc``: its own class's row, else its nearest mapped base class's."""
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return _UNMAPPED


def answer(exc: EditError) -> tuple[int, str, dict[str, str]]:
    """(status, code, headers) of a domain error."""
    mapping = mapping_of(exc)
    retry_after = exc.retry_after if exc.retry_after is not None else mapping.retry_after
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else {}
    return mapping.status, mapping.code, headers


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
}


def error_response(status: int, code: str, message: str, *, fields: list | None = None,
                   headers: dict[str, str] | None = None, job_id: Optional[str] = None) -> web.Response:
    body = ErrorBody(error=code, message=message, fields=fields or [], job_id=job_id)
    return web.json_response(body.model_dump(mode="json", exclude_none=True), status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render ``EditError``s, aiohttp's own HTTP errors and anything unexpected as ``ErrorBody``."""
    try:
        return await handler(request)
    except EditError as exc:
        status, code, headers = answer(exc)
        response = error_response(status, code, exc.message, fields=exc.fields, headers=headers, job_id=exc.job_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        response = error_response(exc.status, code, _describe(request, exc), headers=headers)
    except Exception:  # noqa: BLE001 - the caller still gets JSON; the trace goes to the log
        log.exception("unhandled error on %s %s", request.method, request.path)
        code = "internal_error"
        response = error_response(500, code, "internal error; the miner logged the details")
    if response.status < 500:  # 5xx were logged with their traceback above
        log.info("%s %s from %s -> %d %s: %s", request.method, request.path, request.remote, response.status, code,
                 response.text[:300] if response.text else "")
    hook = request.app.get(ON_ERROR)
    if hook is not None:
        hook(code)
    return response


def _describe(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no route {request.method} {request.path}"
    if exc.status == 405:
        return f"method {request.method} is not allowed on {request.path}"
    return exc.text or exc.reason


class _JsonErrorRequestHandler(RequestHandler):
    """A connection handler whose HTTP parse errors (request line or header too long, a malformed
    request) are answered with ``ErrorBody`` JSON too: they never reach the middleware."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: Optional[BaseException] = None,
                     message: Optional[str] = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        code = _HTTP_CODES.get(status, "bad_request")
        detail = str(getattr(exc, "message", None) or message or exc or "unreadable").strip().splitlines()[0][:200]
        log.info("malformed HTTP request from %s -> %d %s: %s", request.remote, status, code, detail)
        response = error_response(status, code, f"malformed HTTP request: {detail}")
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer HTTP parse errors as JSON.

    aiohttp offers no public hook for the connection-level error page, so the server its runner
    makes is given a handler class that renders it (tests/unit/test_serve.py::test_http_parse_errors_are_json_too
    pins this).
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server
