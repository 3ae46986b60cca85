"""The service's domain errors: what went wrong, in words a caller can act on. No HTTP here: the doors map each
class to a status, a public code and headers in one table (``kontext/http/errors.py``)."""

from __future__ import annotations

from typing import Any, Optional


class EditError(Exception):
    """Base of every error the service reports to a caller.

    The message is shown to the caller as is, so it must never contain secrets. ``retry_after`` is a hint in
    seconds where the error passes (a full queue, an outage); the doors send it as ``Retry-After``.
    """

    def __init__(self, message: str, *, fields: Optional[list[dict[str, Any]]] = None,
                 job_id: Optional[str] = None, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or []
        self.job_id = job_id
        self.retry_after = retry_after


class InvalidRequest(EditError):
    """The request cannot be served as sent (bad image, no usable image source, malformed body)."""


class ValidationFailed(EditError):
    """The body is JSON but does not fit the schema (a field missing, of the wrong type or out of range)."""


class Unauthorized(EditError):
    """The signature is missing, malformed, stale, tampered, replayed or for another receiver."""


class Forbidden(EditError):
    """A correctly signed caller that may not call (not registered, no validator permit)."""


class NotFound(EditError):
    """Something other than a job is not here (a hotkey this door does not serve)."""


class JobNotFound(EditError):
    """No such job on this miner."""


class JobExpired(EditError):
    """The job existed but its record and files were removed by the retention sweep."""


class JobConflict(EditError):
    """Another request already holds this ``job_id``."""


class ResultNotReady(EditError):
    """The job has not completed (yet, or at all)."""


class JobFailed(EditError):
    """A ``/sync/edit`` job ran and failed; the message is the job's own error."""


class SyncTimeout(EditError):
    """A ``/sync/edit`` job did not finish in time; it keeps running and can be fetched later."""


class PayloadTooLarge(EditError):
    """A body or image over the limits."""


class ServiceDisabled(EditError):
    """ENABLE_KONTEXT_EDIT=false."""


class ServiceBusy(EditError):
    """The queue is full (MAX_QUEUE)."""


class DecodingBusy(EditError):
    """MAX_DECODING_BYTES: other requests' bodies are being read and decoded; this one would pass the bound.
    Nothing of it was read; retry shortly."""


class DeadlineUnreachable(EditError):
    """ADMISSION_DEADLINE_SECONDS: the work ahead says this job would finish too late."""


class ServiceUnavailable(EditError):
    """The miner cannot take jobs now: stopping, or its engine failed."""


class StorageUnavailable(EditError):
    """The one storage failure every backend raises: the data directory, SQLite or Redis refused (disk full,
    read-only, corrupt, unreachable). The job itself is not at fault; retry later."""


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
