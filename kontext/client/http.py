"""HTTP for the command-line tools: TLS verified as Python does by default, plus a private CA (``--cacert``);
a transport failure becomes one ``ClientError`` sentence that names the fix."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from kontext.client.oneline import ClientError, one_line


@dataclass(frozen=True)
class Reply:
    """A miner's answer: status, body, headers and how long it took."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ClientError(f"the miner answered {self.status} with no JSON: {self.body[:120]!r}") from None

    @property
    def message(self) -> str:
        """The miner's error sentence (its JSON ``message``), else the start of the body."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return one_line(self.body[:200].decode(errors="replace")) or "(empty body)"
        return one_line(data.get("message", data) if isinstance(data, dict) else data)


def tls_context(cacert: Optional[str] = None) -> ssl.SSLContext:
    """Python's default verification (system CAs, host name); ``cacert`` adds a private CA to those."""
    context = ssl.create_default_context()
    if cacert:
        path = os.path.expanduser(cacert)
        try:
            context.load_verify_locations(cafile=path)
        except FileNotFoundError:
            raise ClientError(f"--cacert {cacert}: no such file") from None
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(f"--cacert {cacert}: not a PEM CA certificate ({one_line(exc)})") from None
    return context


def describe(url: str, reason: object, timeout: float) -> tuple[str, str]:
    """A transport failure in the operator's words, and what to do about it ("" where there is nothing to say)."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    if isinstance(reason, ssl.SSLCertVerificationError):
        seen = reason.verify_message or one_line(reason)
        if "hostname" in seen.lower() or "ip address mismatch" in seen.lower():
            return (f"the TLS certificate of {where} does not verify: {seen}",
                    f"use a certificate that names {parts.hostname}, the host name validators connect to")
        return (f"the TLS certificate of {where} does not verify: {seen}",
                "a private CA: pass --cacert CA.pem (validators trust only public CAs: use one for the live door)")
    if isinstance(reason, ssl.SSLError):
        plain = "WRONG_VERSION_NUMBER" in str(reason)
        return (f"the TLS handshake with {where} failed: {one_line(reason)}",
                "is the port serving plain HTTP? then use http://" if plain else "")
    if isinstance(reason, ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused", "is the miner running and listening on this port?"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {parts.hostname}: {reason.strerror}", "check the host name"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"{url}: no answer within {timeout:g} s", ""
    return f"cannot reach {where}: {one_line(reason) or type(reason).__name__}", ""


def explain(url: str, reason: object, timeout: float) -> str:
    """``describe`` in one sentence."""
    seen, fix = describe(url, reason, timeout)
    return f"{seen} ({fix})" if fix else seen


class Http:
    """Blocking requests with one TLS context; an HTTP error status is a ``Reply``, a transport failure raises."""

    def __init__(self, cacert: Optional[str] = None, timeout: float = 60.0) -> None:
        self.context = tls_context(cacert)
        self.timeout = timeout

    def request(self, method: str, url: str, *, body: Optional[bytes] = None,
                headers: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None) -> Reply:
        """``body`` goes out whatever the method (the validator's signed GET carries ``{}``)."""
        limit = self.timeout if timeout is None else timeout
        try:
            request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
        except ValueError:
            raise ClientError(f"{url!r} is not an http:// or https:// URL") from None
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=limit, context=self.context) as response:
                data = response.read()
                return Reply(response.status, data, dict(response.headers), time.monotonic() - started)
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.read(), dict(exc.headers or {}), time.monotonic() - started)
        except urllib.error.URLError as exc:
            raise ClientError(explain(url, exc.reason, limit)) from None
        except (OSError, http.client.HTTPException) as exc:  # a timeout or reset after the connection was made
            raise ClientError(explain(url, exc, limit)) from None

    def get(self, url: str, *, timeout: Optional[float] = None) -> Reply:
        return self.request("GET", url, timeout=timeout)
