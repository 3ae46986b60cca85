"""Header names of the wire contract, and the Epistula signed string, defined once."""

from __future__ import annotations

import hashlib

# Callback POST (miner -> receiver).
CALLBACK_SECRET_HEADER = "X-Callback-Secret"
CALLBACK_SIGNATURE_HEADER = "X-Callback-Signature"
CALLBACK_TIMESTAMP_HEADER = "X-Callback-Timestamp"

# Result responses (GET /edit/result, /images/..., POST /sync/edit) and callbacks.
JOB_ID_HEADER = "X-Job-ID"
STATUS_HEADER = "X-Status"
SEED_HEADER = "X-Seed"
IMAGE_SHA256_HEADER = "X-Image-SHA256"
RECIPE_HEADER = "X-Recipe"

# Epistula (validator -> miner), as the subnet's orchestrator signs requests.
EPISTULA_SIGNATURE = "Epistula-Signature"
EPISTULA_TIMESTAMP = "Epistula-Timestamp"
EPISTULA_UUID = "Epistula-Uuid"
EPISTULA_SIGNED_BY = "Epistula-Signed-By"
EPISTULA_SIGNED_FOR = "Epistula-Signed-For"


def epistula_message(body: bytes, uuid: str, timestamp_ms: int | str, signed_for: str) -> bytes:
    """The signed string: ``sha256(body).uuid.timestamp_ms.signed_for``, over the body bytes as sent."""
    return f"{hashlib.sha256(body).hexdigest()}.{uuid}.{timestamp_ms}.{signed_for}".encode()
