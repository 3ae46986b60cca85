"""The wire contract: the seed's examples validate, and each range and default holds."""

import json
from datetime import timezone

import pytest
from pydantic import ValidationError

from protocol import CallbackPayload, EditAccepted, EditRequest, JobStatus, StatusRecord
from protocol import limits

SEED_REQUEST = {
    "prompt": "Add a red hat to the person",
    "image_b64": "base64_encoded_png_or_jpeg",
    "seed": 42,
    "guidance_scale": 2.5,
    "num_inference_steps": 28,
}
SEED_RESPONSE = {
    "accepted": True,
    "job_id": "edit-abc123",
    "status": "queued",
    "status_url": "/edit/status/edit-abc123",
    "result_url": "/edit/result/edit-abc123",
}
SEED_STATUS = {
    "id": "edit-abc123",
    "status": "completed",
    "queued_at": "2025-10-14T12:00:00Z",
    "completed_at": "2025-10-14T12:00:15Z",
    "result_url": "/edit/result/edit-abc123",
    "image_url": "http://miner:8091/images/edits/edit-abc123.png",
    "callback": {
        "status": "delivered",
        "status_code": 200,
        "attempted_at": "2025-10-14T12:00:15Z",
        "payload_status": "completed",
    },
    "request": {"prompt": "x", "seed": 1, "guidance_scale": 2.5, "num_inference_steps": 28},
}


def test_seed_examples_validate() -> None:
    request = EditRequest.model_validate(SEED_REQUEST)
    assert request.seed == 42 and request.has_image_source
    assert EditAccepted.model_validate(SEED_RESPONSE).job_id == "edit-abc123"
    status = StatusRecord.model_validate(SEED_STATUS)
    assert status.callback is not None and status.callback.status_code == 200
    assert status.status is JobStatus.COMPLETED


def test_defaults_are_the_seed_defaults() -> None:
    request = EditRequest.model_validate({"prompt": "p", "seed": 1, "image_b64": "x"})
    assert request.guidance_scale == limits.GUIDANCE_SCALE_DEFAULT == 2.5
    assert request.num_inference_steps == limits.NUM_INFERENCE_STEPS_DEFAULT == 28


def test_unknown_fields_such_as_strength_are_ignored() -> None:
    request = EditRequest.model_validate({**SEED_REQUEST, "strength": 0.8, "foo": [1]})
    assert "strength" not in request.model_dump()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"seed": None}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seed": "42"}, "seed"),
        ({"seed": 4.5}, "seed"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"guidance_scale": 0.99}, "guidance_scale"),
        ({"guidance_scale": 20.01}, "guidance_scale"),
        ({"guidance_scale": "2.5"}, "guidance_scale"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 101}, "num_inference_steps"),
        ({"num_inference_steps": 2.0}, "num_inference_steps"),
        ({"width": 500, "height": 512}, "width"),
        ({"width": 32, "height": 32}, "width"),
        ({"job_id": "../etc/passwd"}, "job_id"),
        ({"callback_url": "ftp://host/x"}, "callback_url"),
        ({"image_url": "file:///etc/passwd"}, "image_url"),
        ({"expiry": "tomorrow"}, "expiry"),
    ],
)
def test_out_of_contract_values_name_their_field(change: dict, field: str) -> None:
    body = {**SEED_REQUEST, **change}
    if change.get("seed", 0) is None:
        body.pop("seed")
    with pytest.raises(ValidationError) as info:
        EditRequest.model_validate(body)
    assert field in {str(e["loc"][0]) for e in info.value.errors() if e["loc"]}


def test_range_edges_are_accepted() -> None:
    for guidance, steps in ((1.0, 1), (20.0, 100), (7, 50)):
        EditRequest.model_validate({**SEED_REQUEST, "guidance_scale": guidance, "num_inference_steps": steps})
    EditRequest.model_validate({**SEED_REQUEST, "seed": 0})
    EditRequest.model_validate({**SEED_REQUEST, "seed": 2**64 - 1})


def test_width_and_height_come_together() -> None:
    with pytest.raises(ValidationError, match="together"):
        EditRequest.model_validate({**SEED_REQUEST, "width": 512})
    request = EditRequest.model_validate({**SEED_REQUEST, "width": 768, "height": 512})
    assert (request.width, request.height) == (768, 512)


def test_naive_expiry_is_utc() -> None:
    request = EditRequest.model_validate({**SEED_REQUEST, "expiry": "2025-10-22T12:00:00"})
    assert request.expiry is not None and request.expiry.tzinfo == timezone.utc


def test_no_image_source_is_a_service_rule_not_a_schema_error() -> None:
    request = EditRequest.model_validate({"prompt": "p", "seed": 1})
    assert not request.has_image_source


def test_callback_form_fields() -> None:
    from datetime import datetime

    payload = CallbackPayload(job_id="edit-1", status=JobStatus.FAILED,
                              completed_at=datetime(2025, 10, 22, 11, 45, tzinfo=timezone.utc), error="boom")
    assert payload.form_fields() == {"job_id": "edit-1", "status": "failed",
                                     "completed_at": "2025-10-22T11:45:00Z", "error": "boom"}


def test_request_round_trips_through_json() -> None:
    request = EditRequest.model_validate({**SEED_REQUEST, "expiry": "2025-10-22T12:00:00Z", "seed": 2**64 - 1})
    again = EditRequest.model_validate_json(request.model_dump_json())
    assert again == request
    assert json.loads(request.model_dump_json())["seed"] == 2**64 - 1


BAD_URLS = [
    ("http://hook.test:99999/cb", "port"),
    ("http://hook.test:0/cb", "port"),
    ("http://hook.test:-1/cb", "port"),
    ("http://hook.test:http/cb", "port"),
    ("http://hook.test/a b", "whitespace"),
    ("http://hook test/cb", "whitespace"),
    (" http://hook.test/cb", "whitespace"),
    ("http://hook.test/cb\r\nX-Injected: 1", "whitespace"),
    ("http://hook.test/cb\n", "whitespace"),
    ("http://hook.test/\tcb", "whitespace"),
    ("http://hook.test\x00/cb", "control"),
    ("http://hook.test/\x7fcb", "control"),
    ("http://hook.test/\x85cb", "whitespace or control"),
    ("http://alice:s3cret@hook.test/cb", "credentials"),
    ("http://@hook.test/cb", "credentials"),
    ("http:///cb", "with a host"),
    ("http:hook.test/cb", "with a host"),
    ("//hook.test/cb", "with a host"),
    ("hook.test/cb", "with a host"),
    ("ws://hook.test/cb", "http"),
    ("http://[::1/cb", "not a valid URL"),
    ("http://xn--zz/cb", "not a valid URL"),
]


@pytest.mark.parametrize("field", ["callback_url", "image_url"])
@pytest.mark.parametrize("url, words", BAD_URLS)
def test_urls_are_parsed_at_submit_and_refusals_name_the_field(field: str, url: str, words: str) -> None:
    """Port 99999, spaces and CR/LF were accepted and failed at delivery (CR/LF stripped there: another path)."""
    with pytest.raises(ValidationError) as info:
        EditRequest.model_validate({**SEED_REQUEST, field: url})
    (error,) = info.value.errors()
    assert error["loc"] == (field,) and words in error["msg"], error["msg"]


@pytest.mark.parametrize("url", ["http://hook.test/cb", "HTTPS://Hook.Test:443/cb?x=1&y=%20#f", "http://h:1/",
                                 "http://h:65535/", "http://127.0.0.1:8080/results/callback", "http://[::1]:9/x",
                                 "https://exämple.com/päth", "http://h:/x"])
def test_urls_a_client_can_request_are_accepted(url: str) -> None:
    for field in ("callback_url", "image_url"):
        assert getattr(EditRequest.model_validate({**SEED_REQUEST, field: url}), field) == url


@pytest.mark.parametrize("secret", ["s\r\nX-Injected: 1", "line\n", "tab\tend\t", " leading", "trailing ",
                                    "nul\x00", "del\x7f", "caf\u00e9", "bell\x07"])
def test_a_callback_secret_must_be_a_header_value(secret: str) -> None:
    with pytest.raises(ValidationError) as info:
        EditRequest.model_validate({**SEED_REQUEST, "callback_secret": secret})
    (error,) = info.value.errors()
    assert error["loc"] == ("callback_secret",) and "HTTP header" in error["msg"]


def test_header_value_secrets_are_accepted() -> None:
    for secret in ("9f86d081884c7d659a2feaa0c55ad015", "your-secret-key", "with inner  space\tand tab", "~!@#$%^&*"):
        assert EditRequest.model_validate({**SEED_REQUEST, "callback_secret": secret}).callback_secret == secret
