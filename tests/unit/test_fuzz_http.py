"""Fuzz the sidecar's HTTP contract from its own OpenAPI document: no input may cause a 5xx.

Schemathesis generates valid and invalid requests for every operation; hypothesis adds raw
bodies of arbitrary JSON and bytes. The engine is the fast fake: the contract is under test.
"""

from __future__ import annotations

import base64
from typing import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis.checks import not_a_server_error

from kontext.http.openapi import openapi_document
from kontext.runtime import Runtime
from kontext.http.app import create_app
from tests.e2e.servers import ThreadedApp
from tests.fakes import FakeEngine, png_bytes
from tests.unit.test_sidecar import make_settings

schema = schemathesis.openapi.from_dict(openapi_document())
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedApp]:
    cfg = make_settings(tmp_path_factory.mktemp("fuzz"), max_queue=10_000, max_image_pixels=256 * 256)
    app = ThreadedApp(lambda: create_app(Runtime(cfg, engine=FakeEngine()), manage_runtime=True))
    app.start()
    yield app
    app.stop()


@schema.parametrize()
@FUZZ
def test_no_operation_answers_5xx(case: schemathesis.Case, server: ThreadedApp) -> None:
    response = case.call(base_url=server.url, timeout=10)
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and case.path != "/metrics":
        body = response.json()
        assert body["error"] and body["message"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["prompt", "seed", "image_b64", "image_url", "reference_job_id", "guidance_scale",
          "num_inference_steps", "width", "height", "job_id", "callback_url", "callback_secret", "expiry"]
VALID_B64 = base64.b64encode(png_bytes((16, 16))).decode()


@given(body=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=8))
@FUZZ
def test_arbitrary_field_values_never_5xx(server: ThreadedApp, body: dict) -> None:
    body.setdefault("image_b64", VALID_B64)
    response = requests.post(f"{server.url}/edit", json=body, timeout=10)
    assert response.status_code in (200, 400, 409, 413, 422), (response.status_code, response.text)
    assert "message" in response.json() or response.json().get("accepted") is True


@given(raw=st.binary(max_size=300))
@FUZZ
def test_arbitrary_bytes_never_5xx(server: ThreadedApp, raw: bytes) -> None:
    response = requests.post(f"{server.url}/edit", data=raw, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), (response.status_code, response.text)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_refused(server: ThreadedApp, literal: bytes) -> None:
    body = b'{"prompt": "p", "seed": 1, "image_b64": "%s", "guidance_scale": %s}' % (VALID_B64.encode(), literal)
    response = requests.post(f"{server.url}/edit", data=body, timeout=10)
    assert response.status_code == 422 and "guidance_scale" in response.text


@pytest.fixture(scope="module")
def known_jobs(server: ThreadedApp) -> list[str]:
    """Jobs that exist: one finished, one still running (the fake engine holds nothing), one failed."""
    import base64
    import time

    image = base64.b64encode(png_bytes()).decode()
    ids = []
    for prompt in ("ok", "fail on purpose"):
        body = {"prompt": prompt, "seed": 1, "image_b64": image, "num_inference_steps": 1}
        ids.append(requests.post(f"{server.url}/edit", json=body, timeout=10).json()["job_id"])
    for job_id in ids:
        for _ in range(200):
            if requests.get(f"{server.url}/edit/status/{job_id}", timeout=10).json()["status"] in ("completed",
                                                                                                   "failed"):
                break
            time.sleep(0.02)
    return ids


@given(data=st.data())
@FUZZ
def test_arbitrary_job_ids_never_5xx(server: ThreadedApp, known_jobs: list[str], data: st.DataObject) -> None:
    """Known ids, ids that look like them, and arbitrary text: every answer is a JSON 2xx/4xx."""
    from urllib.parse import quote

    known = st.sampled_from(known_jobs)
    job_id = data.draw(st.one_of(known, known.map(lambda j: j + data.draw(st.text(max_size=3))),
                                 known.map(lambda j: j.upper()), st.text(max_size=40)))
    for route, suffix in (("/edit/status/", ""), ("/edit/result/", ""), ("/images/edits/", ".png")):
        response = requests.get(f"{server.url}{route}{quote(job_id + suffix, safe='')}", timeout=10)
        assert response.status_code in (200, 404, 405, 409, 410), (route, job_id, response.status_code)
        if response.status_code == 200:
            assert job_id in known_jobs
        else:
            assert response.json()["error"]
