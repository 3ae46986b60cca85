"""One place that turns every failure of a request into a JSON error response (never an HTML page or a bare 500).

What never reaches a handler is aiohttp's to answer: a request whose HTTP framing cannot be parsed (request line,
headers or chunk sizes malformed or over aiohttp's limits, a ``Content-Encoding`` it does not support) gets aiohttp's
own plain-text 400 and a closed connection. aiohttp has no public hook for that page (its connection handler's
``handle_error``), and such a request carries no job; ``connection_log`` only keeps each to one line of the log.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Awaitable, Callable, NamedTuple, Optional

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

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
    errors.DecodingBusy: ErrorMapping(503, "decoding_busy", 2),
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
    408: "request_timeout",
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
    """Render ``EditError``s, aiohttp's own HTTP errors, unreadable bodies and anything unexpected as ``ErrorBody``;
    a client that went away gets no answer (nobody would read it) and no traceback."""
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
        if exc.status in (408, 413):  # the rest of the body is not wanted
            response.force_close()
    except web.RequestPayloadError as exc:  # the body as sent cannot be decoded: bad gzip/deflate, broken chunks
        code = "bad_request"
        response = error_response(400, code, f"the request body cannot be read: {_first_line(exc)}")
        response.force_close()
    except Exception as exc:  # noqa: BLE001 - the caller still gets JSON; the trace goes to the log
        if _client_gone(request, exc):
            log.info("%s %s from %s: the client went away (%s)", request.method, request.path, request.remote,
                     _first_line(exc) or type(exc).__name__)
            return web.Response(status=400)  # written to a closed connection: aiohttp drops it quietly
        log.exception("unhandled error on %s %s", request.method, request.path)
        code = "internal_error"
        response = error_response(500, code, "internal error; the miner logged the details")
    if code != "internal_error":  # (that one was logged with its traceback above)
        # A refusal the miner chose (503: queue full, deadline, stopping) costs a failure with the validator: the
        # operator sees it on stderr; a caller's mistake (4xx) is an INFO line.
        log.log(logging.WARNING if response.status >= 500 else logging.INFO, "%s %s from %s -> %d %s: %s",
                request.method, request.path, request.remote, response.status, code,
                response.text[:300] if response.text else "")
    hook = request.app.get(ON_ERROR)
    if hook is not None:
        hook(code)
    return response


def _client_gone(request: web.Request, exc: Exception) -> bool:
    """The connection broke under the handler (reset, closed mid-body, a TLS error): no one is left to answer."""
    transport = request.transport
    gone = transport is None or transport.is_closing()
    return gone and isinstance(exc, (OSError, asyncio.IncompleteReadError))


def _first_line(exc: BaseException) -> str:
    """What went wrong, on one short line: aiohttp's parse errors read "400, message: <what>" over lines."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, HttpProcessingError) and candidate.message:
            return " ".join(str(candidate.message).split())[:200]
    return " ".join(str(exc).split())[:200]


def _describe(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no route {request.method} {request.path}"
    if exc.status == 405:
        return f"method {request.method} is not allowed on {request.path}"
    return exc.text or exc.reason


class _OneLine(logging.Filter):
    """aiohttp logs a request it cannot parse, and a body it could not decode that no handler read, with a
    traceback at ERROR: the caller's fault, so one INFO line instead (kept at ERROR: anything else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, web.RequestPayloadError)):
            record.msg, record.args = f"{record.getMessage()}: malformed request: {_first_line(exc)}", ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


connection_log = logging.getLogger("kontext.http.connections")
"""The logger every listener's connections log to (``web.AppRunner(logger=...)``)."""
connection_log.addFilter(_OneLine())
