"""Wire types of the edit contract: request, replies, status record and callback payload."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from protocol import limits
from protocol.fields import HeaderValueText, HttpUrlText


class JobStatus(str, Enum):
    """Lifecycle of an edit job: queued -> processing -> completed | failed."""

    QUEUED = "queued"
    """Accepted and persisted; waiting for the worker."""
    PROCESSING = "processing"
    """The engine is running this job."""
    COMPLETED = "completed"
    """The result PNG is stored and can be downloaded."""
    FAILED = "failed"
    """The job ended without a result; ``error`` says why."""

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


class CallbackStatus(str, Enum):
    """What happened to the job's one webhook delivery."""

    PENDING = "pending"
    """The job has not finished yet, or its callback waits for ``not_before``."""
    SENDING = "sending"
    """The one POST is under way. A miner that stops now records it ``failed`` at its next start:
    a callback is sent at most once."""
    DELIVERED = "delivered"
    """The receiver answered 2xx."""
    FAILED = "failed"
    """Connection error, timeout, refused address, non-2xx, or the miner stopped during the POST;
    ``error`` says which."""
    EXPIRED = "expired"
    """Not sent: the request's ``expiry`` had passed when the job finished."""
    SKIPPED = "skipped"
    """Not sent: the request had no ``callback_url``."""


class ImageSource(str, Enum):
    """Where the job's input image came from."""

    BASE64 = "base64"
    URL = "url"
    REFERENCE_EDIT = "reference_edit"
    BASE64_FALLBACK = "base64_fallback"
    URL_FALLBACK = "url_fallback"


def _utc(value: datetime) -> datetime:
    """Naive timestamps are taken as UTC so comparisons never raise."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


Dimension = Annotated[
    Optional[int],
    Field(default=None, ge=limits.DIMENSION_MIN, le=limits.DIMENSION_MAX, multiple_of=limits.DIMENSION_MULTIPLE,
          strict=True),
]


class EditRequest(BaseModel):
    """``POST /edit`` body. Unknown fields (e.g. ``strength``) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    prompt: str = Field(min_length=1, max_length=limits.PROMPT_MAX_CHARS, description="Edit instruction.")
    seed: int = Field(ge=limits.SEED_MIN, le=limits.SEED_MAX, strict=True, description="Noise seed.")
    image_b64: Optional[str] = Field(default=None, min_length=1, description="Base64 PNG, JPEG (multi-picture JPEG too) or WebP; line breaks allowed.")
    image_url: HttpUrlText = None
    reference_job_id: Optional[str] = Field(default=None, min_length=1, max_length=128)
    guidance_scale: float = Field(
        default=limits.GUIDANCE_SCALE_DEFAULT, ge=limits.GUIDANCE_SCALE_MIN, le=limits.GUIDANCE_SCALE_MAX
    )
    num_inference_steps: int = Field(
        default=limits.NUM_INFERENCE_STEPS_DEFAULT,
        ge=limits.NUM_INFERENCE_STEPS_MIN,
        le=limits.NUM_INFERENCE_STEPS_MAX,
        strict=True,
    )
    width: Dimension = None
    height: Dimension = None
    job_id: Optional[str] = Field(default=None, pattern=limits.JOB_ID_PATTERN)
    callback_url: HttpUrlText = None
    callback_secret: HeaderValueText = None
    expiry: Optional[datetime] = None

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain non-whitespace text")
        return value

    @field_validator("guidance_scale", mode="before")
    @classmethod
    def _guidance_is_number(cls, value: Any) -> Any:
        # Strings such as "2.5" would otherwise be coerced; booleans are ints in Python.
        if isinstance(value, (str, bool)):
            raise ValueError("must be a number")
        return value

    @field_validator("expiry")
    @classmethod
    def _expiry_utc(cls, value: Optional[datetime]) -> Optional[datetime]:
        return None if value is None else _utc(value)

    @model_validator(mode="after")
    def _size_is_a_pair(self) -> "EditRequest":
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height must be given together")
        return self

    @property
    def has_image_source(self) -> bool:
        """Whether any image source was given; checked by the service (a 400, not a schema error)."""
        return any(v is not None for v in (self.image_b64, self.image_url, self.reference_job_id))


class EditAccepted(BaseModel):
    """Reply to an accepted ``POST /edit``."""

    accepted: bool = True
    job_id: str
    status: JobStatus = JobStatus.QUEUED
    status_url: str
    result_url: str


class RequestSummary(BaseModel):
    """The request as the status record echoes it: no image bytes, never the secret."""

    prompt: str
    seed: int
    guidance_scale: float
    num_inference_steps: int
    width: Optional[int] = None
    height: Optional[int] = None
    reference_job_id: Optional[str] = None
    image_source: Optional[ImageSource] = None
    callback_url: Optional[str] = None
    expiry: Optional[datetime] = None


class CallbackRecord(BaseModel):
    """Outcome of the job's webhook delivery."""

    status: CallbackStatus
    status_code: Optional[int] = None
    attempted_at: Optional[datetime] = None
    payload_status: Optional[JobStatus] = None
    error: Optional[str] = None


class CallbackPending(BaseModel):
    """A callback whose outcome is not known yet: ``waiting`` (the job runs, or the callback waits for
    ``not_before``) or ``sending`` (its one POST is under way)."""

    state: Literal["waiting", "sending"]
    not_before: Optional[datetime] = None
    """With CALLBACK_NOT_BEFORE_SECONDS: delivery waits until then (the result is visible at once)."""


class Progress(BaseModel):
    """Denoising progress of a running job: step ``step`` of ``total``."""

    step: int
    total: int


class StatusRecord(BaseModel):
    """``GET /edit/status/{job_id}`` body."""

    id: str
    status: JobStatus
    queued_at: datetime
    started_at: Optional[datetime] = None
    completed_at: Optional[datetime] = None
    failed_at: Optional[datetime] = None
    error: Optional[str] = None
    result_url: str
    image_url: Optional[str] = None
    result_sha256: Optional[str] = None
    """SHA256 of the PNG bytes: what the subnet's audit compares."""
    result_pixels_sha256: Optional[str] = None
    """SHA256 of the raw RGB pixels (row-major, 8 bits a channel): equal pixels with a different PNG
    hash point at the PNG encoder (Pillow's zlib-ng), not at the numbers."""
    result_width: Optional[int] = None
    result_height: Optional[int] = None
    recipe: Optional[str] = None
    """The recipe that decides the bytes (``reference-v1``, ``kontext-v1``)."""
    ignored_fields: list[str] = Field(default_factory=list)
    """Request fields the recipe records but does not use (``reference-v1`` ignores width/height)."""
    attempts: int = 0
    """How many times a worker started it (a miner that stopped mid-job runs it again at its next start)."""
    worker: Optional[str] = None
    """The worker (device) that ran it."""
    queue_position: Optional[int] = None
    progress: Optional[Progress] = None
    queued_ms: Optional[int] = None
    run_ms: Optional[int] = None
    request: RequestSummary
    callback: Optional[CallbackRecord] = None
    """Only once the outcome is one of the seed's four (delivered, failed, expired, skipped): a client may take
    its presence to mean the outcome is known. Absent from the JSON before that."""
    callback_pending: Optional[CallbackPending] = None
    """While a requested callback has no outcome yet. Absent from the JSON otherwise."""

    @model_serializer(mode="wrap")
    def _absent_until_known(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in ("callback", "callback_pending"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class CallbackPayload(BaseModel):
    """Form fields of the webhook POST (the PNG travels beside them as the ``image`` part)."""

    job_id: str
    status: JobStatus
    completed_at: datetime
    image_url: Optional[str] = None
    error: Optional[str] = None
    recipe: Optional[str] = None
    """Sent as the ``X-Recipe`` header, not as a form field."""

    def form_fields(self) -> dict[str, str]:
        fields = {
            "job_id": self.job_id,
            "status": self.status.value,
            "completed_at": format_timestamp(self.completed_at),
        }
        if self.image_url:
            fields["image_url"] = self.image_url
        if self.error:
            fields["error"] = self.error
        return fields


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a machine-readable code, a sentence, and the offending fields."""

    error: str
    message: str
    fields: list[dict[str, Any]] = Field(default_factory=list)
    job_id: Optional[str] = None
    """The job the error is about, where there is one (a failed or timed-out ``/sync/edit``)."""


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix, second precision, as in the specification."""
    return _utc(value).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
