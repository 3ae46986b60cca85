"""`kontext-client preflight`: play the subnet's validator against a running miner, in the validator's order, and
print one line per check, with the fix for each failure."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TextIO
from urllib.parse import urlsplit

from kontext.client.checks import Check, failed, passed, skipped, timing_checks
from kontext.client.http import Http, Reply, describe
from kontext.client.oneline import ClientError, one_line
from kontext.client.signing import uuid7
from kontext.client.validator import CHECK_TIMEOUT_S, SignedDoor, edit_payload, random_seed, sample_image_b64
from protocol.limits import JOB_TYPE_KONTEXT_EDIT

OTHER_HOTKEYS = ("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty")
"""Hotkeys no miner serves (the development keys //Alice and //Bob): /check must answer 404 for them."""
JOB_WAIT_S = 60.0
"""How long the preflight follows its job (the validator gives up at 15 s; this says how late it was)."""
CALLBACK_WAIT_S = 30.0
"""How long after dispatch it waits for the status to show the callback's outcome."""
CHAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ChainTarget:
    """Where to read the commitment: ``network`` as ``neurons.config.chain_network`` gives it."""

    network: str
    netuid: int


class Preflight:
    """The checks, run in order; ``run`` prints each line as it is known and returns the exit code."""

    def __init__(self, *, axon: str, miner_hotkey: str, keypair: Any, http: Http, image_url: Optional[str] = None,
                 callback_url: Optional[str] = None, chain: Optional[ChainTarget] = None,
                 chain_skip: str = "no --subtensor.network given: the commitment was not read") -> None:
        self.url = axon.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"--axon {axon!r} is not a URL like https://HOST:PORT")
        self.host, self.port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self.scheme = parts.scheme
        self.miner_hotkey = miner_hotkey
        self.http = http
        self.door = SignedDoor(http, self.url, keypair, miner_hotkey)
        self.image_url, self.callback_url = image_url, callback_url
        self.chain, self.chain_skip = chain, chain_skip
        self.served_hotkey: Optional[str] = None
        self.payload: dict[str, Any] = {}
        self.job_done = False

    def run(self, out: TextIO) -> int:
        verdicts = []
        for check in self.checks():
            print(check.line(), file=out, flush=True)
            verdicts.append(check.verdict)
        ok = "FAIL" not in verdicts
        print(f"preflight: {verdicts.count('PASS')} passed, {verdicts.count('FAIL')} failed, "
              f"{verdicts.count('SKIP')} skipped: " + ("ready for the validator" if ok else "NOT ready"),
              file=out, flush=True)
        return 0 if ok else 1

    def checks(self) -> Iterator[Check]:
        tls = self._guard("TLS", self.tls)[0]
        yield tls
        reachable = tls.verdict != "FAIL" or self.scheme != "https"
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("GET /", self.root), ("GET /check/{hotkey}", self.check_hotkey), ("signed GET /capacity", self.capacity),
            ("signed POST /edit", self.edit), ("timing", self.timing), ("POST /sync/edit", self.sync),
            ("unsigned POST /edit", self.unsigned)]
        for name, step in steps:
            yield from self._guard(name, step) if reachable else [skipped(name, "not tried: TLS failed (above)")]
        yield from self._guard("chain commitment", self.commitment)

    @staticmethod
    def _guard(name: str, step: Callable[[], Any]) -> list[Check]:
        """The step's check(s); a transport failure (a timeout, a reset) fails it, and the next steps still run."""
        try:
            result = step()
        except ClientError as exc:
            return [failed(name, one_line(exc), "see the miner's log around this time")]
        return list(result) if isinstance(result, list) else [result]

    def tls(self) -> Check:
        name = "TLS"
        if self.scheme != "https":
            return failed(name, f"{self.url} is plain HTTP: the validator only calls https://{self.host}:{self.port}",
                          "serve the door over TLS (--axon.certfile and --axon.keyfile) and use https://")
        try:
            with socket.create_connection((self.host, self.port), timeout=CHECK_TIMEOUT_S) as raw:
                with self.http.context.wrap_socket(raw, server_hostname=self.host) as tls:
                    cert: dict[str, Any] = dict(tls.getpeercert() or {})
                    version = tls.version()
        except (OSError, ssl.SSLError) as exc:
            seen, fix = describe(self.url, exc, CHECK_TIMEOUT_S)
            return failed(name, seen, fix or "see the miner's log")
        issuer = {key: value for rdn in cert.get("issuer", ()) for key, value in rdn}
        return passed(name, f"the certificate verifies for {self.host} ({version}, issued by "
                            f"{issuer.get('organizationName') or issuer.get('commonName', '?')}, "
                            f"valid until {cert.get('notAfter', '?')})")

    def root(self) -> Check:
        reply = self.door.get("/")
        if reply.status != 200:
            return failed("GET /", f"{reply.status}: {reply.message}", "the root must answer 200 unsigned: is this "
                                                                      "the miner's public door (the axon port)?")
        body = reply.json() if reply.body.startswith(b"{") else {}
        self.served_hotkey = body.get("hotkey") if isinstance(body, dict) else None
        return passed("GET /", f"200 in {reply.seconds:.2f} s ({body.get('service', '?')}, engine "
                               f"{body.get('engine', '?')}, serving hotkey {self.served_hotkey or '?'})")

    def _other_hotkey(self) -> str:
        return next(hotkey for hotkey in OTHER_HOTKEYS if hotkey != self.miner_hotkey)

    def _hotkey_fix(self) -> str:
        served = f" ({self.served_hotkey})" if self.served_hotkey else ""
        return (f"start the miner with the wallet of {self.miner_hotkey}, or give --miner-hotkey the hotkey it "
                f"serves{served}")

    def check_hotkey(self) -> Check:
        name = "GET /check/{hotkey}"
        own, other = self.door.get(f"/check/{self.miner_hotkey}"), self.door.get(f"/check/{self._other_hotkey()}")
        if own.status != 200:
            return failed(name, f"{own.status} for {self.miner_hotkey}: {own.message}", self._hotkey_fix())
        if other.status != 404:
            return failed(name, f"{other.status} for another hotkey (expected 404)",
                          "the miner must answer 404 for a hotkey it does not serve")
        return passed(name, f"200 for {self.miner_hotkey}, 404 for another hotkey")

    def _signed_fix(self, reply: Reply) -> str:
        message = reply.message.lower()
        if reply.status == 401 and "receiv" in message:
            return self._hotkey_fix()
        if reply.status == 401:
            return "check this machine's clock (Epistula allows 8 s of skew) and the wallet's hotkey"
        if reply.status == 403:
            return "sign with the miner's own wallet (its gate admits it) or a validator hotkey with a permit"
        if reply.status == 503:
            return "the miner is not taking jobs now: see GET /health and its log"
        return "see the miner's log for this request"

    def capacity(self) -> Check:
        name = "signed GET /capacity"
        reply = self.door.signed("GET", "/capacity", {}, timeout=CHECK_TIMEOUT_S)
        if reply.status != 200:
            return failed(name, f"{reply.status}: {reply.message}", self._signed_fix(reply))
        claims = reply.json()
        if not isinstance(claims, dict) or not all(isinstance(value, bool) for value in claims.values()):
            return failed(name, f"200 but not job type -> boolean: {json.dumps(claims)}",
                          "the validator discards an answer with a non-boolean value")
        if claims.get(JOB_TYPE_KONTEXT_EDIT) is not True:
            return failed(name, f"200 {json.dumps(claims)}: {JOB_TYPE_KONTEXT_EDIT} not claimed",
                          "set CAPACITY_JOB_TYPES to include it, and have the engine loaded (ENABLE_KONTEXT_EDIT)")
        return passed(name, f"200 {json.dumps(claims)}")

    def edit(self) -> Check:
        name = "signed POST /edit"
        image = ({"image_url": self.image_url} if self.image_url else {"image_b64": sample_image_b64()})
        self.payload = edit_payload(seed=random_seed(), callback_url=self.callback_url, **image)
        source = ("input from --image-url" if self.image_url else
                  "input: image_b64 of a generated 512x512 image (no --image-url; the validator sends a public "
                  "https URL)")
        callback = f"callback to {self.callback_url}" if self.callback_url else "no callback_url (no --callback-url)"
        self.dispatched = time.monotonic()
        try:
            reply = self.door.signed("POST", "/edit", self.payload, timeout=CHECK_TIMEOUT_S)
        except ClientError as exc:
            return failed(name, one_line(exc), "answer the dispatch at once (queue the job): the validator fails it "
                                              "otherwise")
        if reply.status != 200:
            return failed(name, f"{reply.status}: {reply.message} ({source})", self._signed_fix(reply))
        job_id = reply.json().get("job_id")
        if job_id != self.payload["job_id"]:
            return failed(name, f"200 but job_id {job_id!r}, not the validator's {self.payload['job_id']}",
                          "keep the caller's job_id: the validator matches the callback by it")
        self.job_done = True
        return passed(name, f"200 in {reply.seconds:.2f} s, job {job_id}; {source}; {callback}")

    def timing(self) -> list[Check]:
        if not self.job_done:
            return [skipped("timing", "no job was accepted")]
        job_id, wait_callback = self.payload["job_id"], bool(self.callback_url)
        status: dict[str, Any] = {}
        pending: Optional[dict[str, Any]] = None
        while time.monotonic() - self.dispatched < JOB_WAIT_S:
            reply = self.door.read(f"/edit/status/{job_id}")
            if reply.status != 200:
                return [failed("timing", f"GET /edit/status answered {reply.status}: {reply.message}",
                               "see the miner's log for this job")]
            status = reply.json()
            pending = status.get("callback_pending") or pending
            finished = status.get("status") in ("completed", "failed")
            if finished and (not wait_callback or "callback" in status
                             or time.monotonic() - self.dispatched > CALLBACK_WAIT_S):
                break
            time.sleep(0.25)
        profile = self.door.read("/health").json().get("profile")
        self.job_done = status.get("status") == "completed"
        return timing_checks(status, profile if isinstance(profile, dict) else None, callback_requested=wait_callback,
                             pending=pending, waited=time.monotonic() - self.dispatched)

    def sync(self) -> Check:
        name = "POST /sync/edit"
        if not self.job_done:
            return skipped(name, "no completed job to compare with")
        reply = self.door.signed("POST", "/sync/edit", {**self.payload, "job_id": uuid7()}, timeout=60)
        if reply.status != 200:
            return failed(name, f"{reply.status}: {reply.message}", self._signed_fix(reply))
        first = self.door.read(f"/edit/result/{self.payload['job_id']}", timeout=30)
        if first.status != 200:
            return failed(name, f"GET /edit/result answered {first.status}: {first.message}", "see the miner's log")
        sync_hash, first_hash = (hashlib.sha256(data).hexdigest() for data in (reply.body, first.body))
        if sync_hash != first_hash:
            return failed(name, f"other bytes than /edit/result for the same request: sync {sync_hash[:16]}, "
                                f"result {first_hash[:16]}",
                          "the same seed, prompt and input must give the same PNG: check the recipe and "
                          "KONTEXT_STRICT_DETERMINISM")
        return passed(name, f"200, the same PNG as GET /edit/result ({len(reply.body)} bytes, sha256 "
                            f"{sync_hash[:16]})")

    def unsigned(self) -> Check:
        name = "unsigned POST /edit"
        base = self.payload or edit_payload(seed=random_seed(), image_b64=sample_image_b64())
        reply = self.door.unsigned_post("/edit", {**base, "job_id": uuid7()})
        if reply.status == 401:
            return passed(name, f"refused: 401 {reply.message}")
        if reply.status < 300:
            return failed(name, f"{reply.status}: an unsigned job was accepted: anyone can fill the queue",
                          "require signatures on every job route (start the miner as the neuron: "
                          "scripts/start_miner.sh)")
        return failed(name, f"{reply.status}: {reply.message} (expected 401)", "see the miner's log")

    def commitment(self) -> Check:
        name = "chain commitment"
        if self.chain is None:
            return skipped(name, self.chain_skip)
        expected = f"{self.host}:{self.port}"
        fix = (f"kontext-commit commit --netuid {self.chain.netuid} --commit.address {self.host} "
               f"--commit.port {self.port} with the miner's wallet flags")
        try:
            text = asyncio.run(read_commitment(self.chain, self.miner_hotkey))
        except Exception as exc:  # noqa: BLE001 - an unreachable chain is a SKIP, said in one line
            return skipped(name, f"chain {self.chain.network} not reachable: {type(exc).__name__}: {one_line(exc)}")
        if text is None:
            return failed(name, f"no commitment for {self.miner_hotkey} on netuid {self.chain.netuid}: validators "
                                "cannot find the miner", fix)
        if text != expected:
            return failed(name, f"the chain says {text!r}, not {expected!r}", fix)
        return passed(name, f"netuid {self.chain.netuid}: {text!r}, the door tested here")


async def read_commitment(target: ChainTarget, hotkey: str) -> Optional[str]:
    """What the validator reads from ``hotkey``'s commitment (neurons.chain), within CHAIN_TIMEOUT_S."""
    from neurons.chain import BittensorChain

    chain = BittensorChain(target.network, None)
    try:
        return await asyncio.wait_for(chain.commitment(target.netuid, hotkey), CHAIN_TIMEOUT_S)
    finally:
        await chain.close()

