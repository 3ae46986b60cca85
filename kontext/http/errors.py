"""One place that turns every failure into a JSON error response (never an HTML page or a bare 500)."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Optional

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from kontext.errors import EditError
from protocol import ErrorBody

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ON_ERROR: web.AppKey[Callable[[str], None]] = web.AppKey("on_error")
"""Optional hook told each error code (the runtime counts them as metrics)."""

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
        response = error_response(exc.status, exc.code, exc.message, fields=exc.fields, headers=exc.headers,
                                  job_id=exc.job_id)
        code = exc.code
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
