"""The service's error hierarchy; each error knows its HTTP status and public code."""

from __future__ import annotations

from typing import Any, Optional


class EditError(Exception):
    """Base of every error the service reports to a caller.

    The message is shown to the caller as is, so it must never contain secrets.
    """

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, fields: Optional[list[dict[str, Any]]] = None,
                 headers: Optional[dict[str, str]] = None, job_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or []
        self.headers = headers or {}
        self.job_id = job_id


class InvalidRequest(EditError):
    status, code = 400, "invalid_request"


class ValidationFailed(EditError):
    """The body is JSON but does not fit the schema (a field missing, of the wrong type or out of range)."""

    status, code = 422, "validation_error"


class Unauthorized(EditError):
    status, code = 401, "unauthorized"


class Forbidden(EditError):
    status, code = 403, "forbidden"


class NotFound(EditError):
    """Something other than a job is not here (a hotkey this door does not serve)."""

    status, code = 404, "not_found"


class JobNotFound(EditError):
    status, code = 404, "job_not_found"


class JobExpired(EditError):
    """The job existed but its record and files were removed by the retention sweep."""

    status, code = 410, "job_expired"


class JobConflict(EditError):
    status, code = 409, "job_exists"


class ResultNotReady(EditError):
    status, code = 409, "result_not_ready"


class JobFailed(EditError):
    """A ``/sync/edit`` job ran and failed; the message is the job's own error."""

    status, code = 422, "job_failed"


class SyncTimeout(EditError):
    """A ``/sync/edit`` job did not finish in time; it keeps running and can be fetched later."""

    status, code = 504, "sync_timeout"


class PayloadTooLarge(EditError):
    status, code = 413, "payload_too_large"


class ServiceDisabled(EditError):
    status, code = 503, "edit_disabled"


class ServiceBusy(EditError):
    status, code = 503, "queue_full"


class DeadlineUnreachable(EditError):
    """ADMISSION_DEADLINE_SECONDS: the queue ahead says this job would finish too late."""

    status, code = 503, "deadline_unreachable"


class ServiceUnavailable(EditError):
    status, code = 503, "service_unavailable"


class StorageUnavailable(EditError):
    """The data directory refused a write (disk full, read-only, permissions)."""

    status, code = 503, "storage_unavailable"


class StartupError(RuntimeError):
    """The process cannot start serving; the message tells the operator what to fix."""


def invalid_from_validation(exc: Any, *, what: str = "request body") -> ValidationFailed:
    """Turn a pydantic ``ValidationError`` into a 422 that names every offending field."""
    fields = []
    for item in exc.errors(include_url=False, include_context=False, include_input=False):
        location = ".".join(str(part) for part in item.get("loc", ())) or "(body)"
        fields.append({"field": location, "message": item.get("msg", "invalid")})
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    return ValidationFailed(f"invalid {what}: {summary}", fields=fields)
