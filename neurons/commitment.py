"""The address:port commitment validators discover us by: validated encoding, and the validator's decoding."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Optional

MAX_RAW_BYTES = 128
"""The largest ``Data::Raw<n>`` variant of the Commitments pallet."""

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class CommitmentError(ValueError):
    """This address:port cannot be committed in a form the subnet's validator parses."""


def commitment_text(address: str, port: int) -> str:
    """``address:port`` once it is something the validator can parse and reach; else CommitmentError.

    The validator reads the bytes as latin-1 and splits on the FIRST colon, so an IPv6 address, a
    colon in the host or non-ASCII text would reach it mangled.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise CommitmentError(f"port must be 1..65535, got {port!r}")
    if not address:
        raise CommitmentError("the address is empty")
    if not address.isascii():
        raise CommitmentError(f"address {address!r} is not ASCII: the validator reads the bytes as latin-1; "
                              "use the punycode (xn--) form or an IPv4 address")
    if any(ch.isspace() for ch in address):
        raise CommitmentError(f"address {address!r} contains whitespace")
    if ":" in address:
        if _is_ipv6(address):
            raise CommitmentError(f"address {address!r} is IPv6: the validator splits the commitment on its "
                                  "first ':', so it cannot parse an IPv6 address; commit an IPv4 address or a "
                                  "host name")
        raise CommitmentError(f"address {address!r} contains ':': the validator splits the commitment on its first "
                              "':'; give the port with --commit.port")
    _check_host(address)
    text = f"{address}:{port}"
    if len(text) > MAX_RAW_BYTES:
        raise CommitmentError(f"{text!r} is {len(text)} bytes; a commitment field holds at most {MAX_RAW_BYTES}")
    return text


def _is_ipv6(address: str) -> bool:
    try:
        ipaddress.IPv6Address(address.strip("[]"))
    except ValueError:
        return False
    return True


def _check_host(address: str) -> None:
    labels = address.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            raise CommitmentError(f"address {address!r} is not a valid IPv4 address") from None
        if ip.is_unspecified:
            raise CommitmentError(f"address {address} is unspecified: commit the public IP validators should reach")
        return
    if len(address) > 253 or not all(_LABEL.match(label) for label in labels):
        raise CommitmentError(f"address {address!r} is neither an IPv4 address nor a host name "
                              "(letters, digits and '-' in dot-separated labels)")


def commitment_info(text: str) -> dict[str, Any]:
    """The ``info`` argument of ``Commitments.set_commitment``: one ``Raw<len>`` field holding ``text``.

    bittensor 11's encoder takes an enum as a one-key dict and ``BoundedVec`` as a plain list (the
    v9 SDK's extra ``[[...]]`` nesting is not needed); the bytes must be exactly ``<len>`` long.
    """
    if not text.isascii():
        raise CommitmentError(f"{text!r} is not ASCII: the validator reads the bytes as latin-1")
    data = text.encode("ascii")
    if len(data) > MAX_RAW_BYTES:
        raise CommitmentError(f"{len(data)} bytes; a commitment field holds at most {MAX_RAW_BYTES}")
    return {"fields": [{f"Raw{len(data)}": data}]}


def validator_text(value: Any) -> Optional[str]:
    """The text the validator reads from a ``CommitmentOf`` value, or None where it finds none.

    Like the validator: only ``fields[0][0]``, its first ``Raw*`` key, bytes as latin-1. The field
    list comes as a tuple of tuples from the validator's SCALE decoder and as a flat list from
    bittensor 11's; the payload as bytes, 0x-hex, a tuple of ints, or (the validator's decoder) a
    1-tuple wrapping the tuple of ints. All hold the same chain bytes.
    """
    info = value.get("info") if isinstance(value, dict) else None
    fields = info.get("fields") if isinstance(info, dict) else None
    if not fields:
        return None
    first = fields[0]
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    if not isinstance(first, dict):
        return None
    key = next((k for k in first if isinstance(k, str) and k.startswith("Raw")), None)
    if key is None:
        return None
    return "".join(chr(b) for b in _payload_bytes(first[key]))


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, str):
        return bytes.fromhex(payload[2:]) if payload.startswith("0x") else payload.encode("latin-1")
    if isinstance(payload, (list, tuple)) and len(payload) == 1 and isinstance(payload[0], (list, tuple)):
        payload = payload[0]  # ((49, 46, ...),): the [u8; n] inside its one-field variant
    return bytes(payload)


def validator_endpoint(text: str) -> tuple[str, str]:
    """``(address, port)`` as the validator splits ``text`` (on the first colon); CommitmentError if it cannot."""
    address, colon, port = text.partition(":")
    if not colon:
        raise CommitmentError(f"{text!r} has no ':'; the validator cannot split it into address and port")
    return address, port


def validator_url(text: str) -> str:
    """The URL the validator builds from ``text`` (its IPv6 bracketing never applies: the address has no ':')."""
    address, port = validator_endpoint(text)
    return f"https://{address}:{port}"


def endpoint_problem(text: str) -> Optional[str]:
    """Why validators cannot use ``text`` as address:port, or None when they can."""
    try:
        address, port = validator_endpoint(text)
        if not (port.isascii() and port.isdigit()):
            raise CommitmentError(f"port {port!r} is not a number")
        commitment_text(address, int(port))
    except CommitmentError as exc:
        return str(exc)
    return None
