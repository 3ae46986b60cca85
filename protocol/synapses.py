"""Synapses the axon serves: the HTTP contract's own models, wrapped for validators.

``POST /EditSynapse``, ``/StatusSynapse`` and ``/ResultSynapse`` take these as JSON and answer
with the same synapse, filled. The fields are the edit contract's (inherited, never copied).
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

from protocol.edit import EditAccepted, EditRequest, StatusRecord
from protocol.limits import JOB_ID_PATTERN


class EditSynapse(EditRequest):
    """An ``EditRequest`` (every field of ``POST /edit``); answered with ``accepted`` filled."""

    accepted: Optional[EditAccepted] = None

    def reply(self) -> dict:
        """The filled synapse as sent back: without the image bytes and never the secret."""
        return self.model_dump(mode="json", exclude={"image_b64", "callback_secret"})


class StatusSynapse(BaseModel):
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    status: Optional[StatusRecord] = None


class ResultSynapse(BaseModel):
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    image_b64: Optional[str] = None
    """The result PNG, base64."""
    sha256: Optional[str] = None
    """SHA256 of the PNG bytes (what the audit compares)."""
    recipe: Optional[str] = None
    """The recipe that made the PNG (``X-Recipe`` on the HTTP routes)."""


SYNAPSES: dict[str, type[BaseModel]] = {
    "EditSynapse": EditSynapse,
    "StatusSynapse": StatusSynapse,
    "ResultSynapse": ResultSynapse,
}
