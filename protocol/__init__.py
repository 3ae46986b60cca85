"""Wire types of the kontext-miner edit contract (HTTP sidecar and axon synapses)."""

from protocol.edit import (
    CallbackPayload,
    CallbackPending,
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
from protocol.synapses import SYNAPSES, EditSynapse, ResultSynapse, StatusSynapse

__all__ = [
    "CallbackPayload",
    "CallbackPending",
    "CallbackRecord",
    "CallbackStatus",
    "EditAccepted",
    "EditRequest",
    "EditSynapse",
    "ErrorBody",
    "ImageSource",
    "JobStatus",
    "Progress",
    "RequestSummary",
    "ResultSynapse",
    "SYNAPSES",
    "StatusRecord",
    "StatusSynapse",
    "format_timestamp",
]
