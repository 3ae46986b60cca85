"""A miner seen from the client: the seed's plain HTTP contract (POST /edit, GET /edit/status/{id},
GET /edit/result/{id}), its POSTs Epistula-signed on a public door, or the door's synapses (btauth/1)."""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any, Callable, Optional, Protocol

from kontext.client.http import Http, Reply
from kontext.client.oneline import ClientError
from kontext.client.signing import btauth_headers, epistula_headers

FINISHED = ("completed", "failed")


class Miner(Protocol):
    def submit(self, payload: dict[str, Any]) -> str: ...
    def status(self, job_id: str) -> dict[str, Any]: ...
    def result(self, job_id: str) -> bytes: ...


def answer(reply: Reply, what: str) -> Reply:
    """``reply`` when it is a success; else one line naming the request, the status and the miner's message."""
    if reply.status >= 400:
        raise ClientError(f"{what}: the miner answered {reply.status}: {reply.message}")
    return reply


class PlainMiner:
    """The seed's HTTP contract at ``base_url``; with ``signer`` (a hotkey keypair) and ``receiver`` (the miner's
    hotkey), each POST is Epistula-signed as the validator signs it."""

    def __init__(self, http: Http, base_url: str, *, signer: Any = None, receiver: Optional[str] = None) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.signer, self.receiver = signer, receiver

    def submit(self, payload: dict[str, Any]) -> str:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.signer is not None:
            headers.update(epistula_headers(self.signer, body=body, receiver=str(self.receiver)))
        reply = self.http.request("POST", f"{self.base_url}/edit", body=body, headers=headers)
        return str(answer(reply, f"POST {self.base_url}/edit").json()["job_id"])

    def status(self, job_id: str) -> dict[str, Any]:
        url = f"{self.base_url}/edit/status/{job_id}"
        data: dict[str, Any] = answer(self.http.get(url), f"GET {url}").json()
        return data

    def result(self, job_id: str) -> bytes:
        url = f"{self.base_url}/edit/result/{job_id}"
        return answer(self.http.get(url), f"GET {url}").body


class SynapseMiner:
    """The public door's synapses (EditSynapse, StatusSynapse, ResultSynapse), btauth/1-signed by ``signer``."""

    def __init__(self, http: Http, base_url: str, *, signer: Any, receiver: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.signer, self.receiver = signer, receiver

    def _call(self, name: str, payload: dict[str, Any]) -> Any:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json",
                   **btauth_headers(self.signer, path=f"/{name}", body=body, receiver=self.receiver)}
        reply = self.http.request("POST", f"{self.base_url}/{name}", body=body, headers=headers)
        return answer(reply, name).json()

    def submit(self, payload: dict[str, Any]) -> str:
        return str(self._call("EditSynapse", payload)["accepted"]["job_id"])

    def status(self, job_id: str) -> dict[str, Any]:
        status: dict[str, Any] = self._call("StatusSynapse", {"job_id": job_id})["status"]
        return status

    def result(self, job_id: str) -> bytes:
        return base64.b64decode(self._call("ResultSynapse", {"job_id": job_id})["image_b64"])


def progress_line(status: dict[str, Any]) -> str:
    progress = status.get("progress") or {}
    if status["status"] == "queued":
        return f"queued (position {status.get('queue_position') or '?'})"
    if progress:
        done = int(30 * progress["step"] / progress["total"])
        return f"[{'#' * done}{'.' * (30 - done)}] step {progress['step']}/{progress['total']}"
    return str(status["status"])


def show_progress(job_id: str, status: dict[str, Any]) -> None:
    end = "\n" if status["status"] in FINISHED else ""
    print(f"\r{job_id}: {progress_line(status):60}", end=end, file=sys.stderr, flush=True)


def wait(miner: Miner, job_id: str, timeout: float,
         on_status: Optional[Callable[[str, dict[str, Any]], None]] = None) -> dict[str, Any]:
    """The job's final status record; ``ClientError`` if it is not finished within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = miner.status(job_id)
        if on_status is not None:
            on_status(job_id, status)
        if status["status"] in FINISHED:
            return status
        time.sleep(0.25)
    raise ClientError(f"{job_id} did not finish within {timeout:g} s")


def edit_png(miner: Miner, payload: dict[str, Any], timeout: float) -> tuple[str, bytes]:
    """Submit, wait, fetch: the job id and its PNG bytes; a failed job is a ``ClientError`` naming its error."""
    job_id = miner.submit(payload)
    status = wait(miner, job_id, timeout)
    if status["status"] == "failed":
        raise ClientError(f"{job_id} failed: {status.get('error')}")
    return job_id, miner.result(job_id)
