"""Text fields the miner sends on, checked at submit rather than when used: URLs it requests, values it sends as
HTTP headers. A value refused here is a 422 naming its field; one accepted is one aiohttp can send as written."""

from __future__ import annotations

import re
from typing import Annotated, Optional
from urllib.parse import urlsplit

import yarl
from pydantic import AfterValidator, Field

from protocol import limits


_PORT = "its port must be a number in 1..65535"


def _http_url(value: Optional[str]) -> Optional[str]:
    """Parsed as aiohttp parses it (yarl): http(s) with a host, a port in 1..65535, no whitespace or control
    characters (a CR/LF would end the request line), no credentials (the outbound guard refuses them:
    ``kontext/delivery/guard.py``)."""
    if value is None:
        return value
    if any(char.isspace() or ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in value):
        raise ValueError("must not contain whitespace or control characters (encode them, e.g. %20)")
    try:
        url = yarl.URL(value)
        host, port, netloc = url.host, url.explicit_port, urlsplit(value).netloc  # yarl drops an empty "@"
    except ValueError as exc:  # a port out of range or not a number, a malformed IPv6 or IDNA host
        raise ValueError(_PORT if "port" in str(exc).lower() else f"is not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https") or not host:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(_PORT)
    if "@" in netloc:
        raise ValueError("must not carry credentials (user:password@)")
    return value


_HEADER_VALUE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")


def _header_value(value: Optional[str]) -> Optional[str]:
    if value is not None and not _HEADER_VALUE.fullmatch(value):
        raise ValueError("must be printable ASCII with no leading or trailing space: it is sent as an HTTP header "
                         "(no line breaks or control characters)")
    return value


HttpUrlText = Annotated[
    Optional[str],
    Field(default=None, min_length=1, max_length=limits.URL_MAX_CHARS),
    AfterValidator(_http_url),
]
"""``image_url``, ``callback_url``."""
HeaderValueText = Annotated[
    Optional[str],
    Field(default=None, min_length=1, max_length=limits.CALLBACK_SECRET_MAX_CHARS),
    AfterValidator(_header_value),
]
"""``callback_secret`` (sent as ``X-Callback-Secret``)."""
