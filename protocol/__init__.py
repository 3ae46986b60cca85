"""Wire types of the kontext-miner edit contract (HTTP sidecar and axon synapses)."""

from protocol.edit import (
    CallbackPayload,
    CallbackRecord,
    CallbackStatus,
    EditAccepted,
    EditRequest,
    ErrorBody,
    ImageSource,
    JobStatus,
    Progress,
    RequestSummary,
    StatusRecord,
    format_timestamp,
)

__all__ = [
    "CallbackPayload",
    "CallbackRecord",
    "CallbackStatus",
    "EditAccepted",
    "EditRequest",
    "ErrorBody",
    "ImageSource",
    "JobStatus",
    "Progress",
    "RequestSummary",
    "StatusRecord",
    "format_timestamp",
]
