"""Webhook delivery: delivered (secret header, HMAC, form fields, PNG), failed, expired, skipped."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest

from protocol.headers import CALLBACK_SECRET_HEADER, CALLBACK_SIGNATURE_HEADER, CALLBACK_TIMESTAMP_HEADER, RECIPE_HEADER
from tests.e2e.kontext_determinism.conftest import MinerClient
from tests.e2e.servers import CallbackReceiver

pytestmark = pytest.mark.e2e


def _future() -> str:
    return (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_delivered_with_secret_signature_and_image(
    miner: MinerClient, callback_receiver: CallbackReceiver, sample_image_b64: str
) -> None:
    url = f"{callback_receiver.public_base}/webhook"  # type: ignore[attr-defined]
    job_id = miner.edit(prompt="Add a red hat", image_b64=sample_image_b64, seed=42, callback_url=url,
                        callback_secret="your-secret-key", expiry=_future())["job_id"]
    got = callback_receiver.wait_for(job_id)
    status = miner.wait_callback(job_id)
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers[CALLBACK_SECRET_HEADER.lower()] == "your-secret-key"
    timestamp = headers[CALLBACK_TIMESTAMP_HEADER.lower()]
    expected = hmac.new(b"your-secret-key", f"{timestamp}.".encode() + got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[CALLBACK_SIGNATURE_HEADER.lower()], f"sha256={expected}")
    assert got.fields["job_id"] == job_id and got.fields["status"] == "completed"
    assert got.fields["completed_at"].endswith("Z")
    assert got.fields["image_url"] == status["image_url"]
    assert got.image == miner.result(job_id)
    assert headers[RECIPE_HEADER.lower()] == status["recipe"]  # the recipe that made the PNG, as in the status
    assert status["callback"]["status"] == "delivered" and status["callback"]["status_code"] == 200
    assert status["callback"]["payload_status"] == "completed" and status["callback"]["attempted_at"]
    assert "your-secret-key" not in str(status)


def test_failed_delivery_is_recorded_not_retried(
    miner: MinerClient, callback_receiver: CallbackReceiver, sample_image_b64: str
) -> None:
    url = f"{callback_receiver.public_base}/status/500"  # type: ignore[attr-defined]
    job_id = miner.edit(prompt="p", image_b64=sample_image_b64, seed=7, callback_url=url)["job_id"]
    status = miner.wait_callback(job_id)
    assert status["status"] == "completed"
    assert status["callback"]["status"] == "failed" and status["callback"]["status_code"] == 500
    assert status["callback"]["error"]
    assert sum(1 for r in callback_receiver.received if r.fields.get("job_id") == job_id) == 1


def test_unreachable_receiver_is_a_failed_callback(miner: MinerClient, sample_image_b64: str) -> None:
    from tests.e2e.servers import free_port

    job_id = miner.edit(prompt="p", image_b64=sample_image_b64, seed=8,
                        callback_url=f"http://127.0.0.1:{free_port()}/nobody")["job_id"]
    status = miner.wait_callback(job_id)
    assert status["callback"]["status"] == "failed" and status["callback"]["status_code"] is None


def test_expired_callback_is_not_sent(
    miner: MinerClient, callback_receiver: CallbackReceiver, sample_image_b64: str
) -> None:
    url = f"{callback_receiver.public_base}/expired"  # type: ignore[attr-defined]
    job_id = miner.edit(prompt="p", image_b64=sample_image_b64, seed=9, callback_url=url,
                        expiry="2020-01-01T00:00:00Z")["job_id"]
    status = miner.wait_callback(job_id)
    assert status["callback"]["status"] == "expired"
    assert not [r for r in callback_receiver.received if r.fields.get("job_id") == job_id]


def test_no_callback_url_is_skipped(miner: MinerClient, sample_image_b64: str) -> None:
    status, _ = miner.edit_and_wait(prompt="p", image_b64=sample_image_b64, seed=10)
    assert status["callback"]["status"] == "skipped"


def test_failed_job_still_calls_back(
    miner: MinerClient, callback_receiver: CallbackReceiver
) -> None:
    url = f"{callback_receiver.public_base}/failed-job"  # type: ignore[attr-defined]
    job_id = miner.edit(prompt="p", seed=11, image_url="http://127.0.0.1:9/none.png", callback_url=url)["job_id"]
    got = callback_receiver.wait_for(job_id)
    status = miner.wait(job_id)
    assert status["status"] == "failed" and "image_url" in status["error"]
    assert got.fields["status"] == "failed" and got.fields["error"] and got.image is None
