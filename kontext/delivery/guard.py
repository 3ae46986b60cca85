"""Outbound address guard (SSRF): which hosts callbacks and image downloads may reach.

Names are checked in the resolver, at connect time, so a name that resolves to a blocked address
is refused even if it resolved elsewhere a moment earlier (DNS rebinding). aiohttp never hands an
IP literal to the resolver, so ``check_url`` reads every spelling of one before the request.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
# What OUTBOUND_ALLOW_PRIVATE opens besides loopback: the networks a deployment runs its own hosts
# on. ipaddress's is_private is wider (documentation, benchmarking, protocol assignments).
_PRIVATE = tuple(ipaddress.ip_network(net) for net in
                 ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
# Not globally reachable per the IANA special-purpose registries, yet is_global calls them global
# on Python releases without the CVE-2024-4032 fix (before 3.11.10, 3.12.4), and fec0::/10
# (deprecated site-local) in every release: the verdict must not depend on the Python patch level.
_NOT_GLOBAL = tuple(ipaddress.ip_network(net) for net in
                    ("192.0.0.0/24", "64:ff9b:1::/48", "3fff::/20", "fec0::/10"))
_SWITCHABLE = ("loopback", "private")


class BlockedAddressError(OSError):
    """Raised at connect time; aiohttp reports it as a connection error (see ``find_refusal``)."""


def _carried_ipv4(ip: IPAddress) -> tuple[IPAddress, str]:
    """The IPv4 address an IPv6 one delivers to (IPv4-mapped, NAT64, 6to4) and how; else (``ip``, "")."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped, "IPv4-mapped"
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF), "NAT64 for"
        if ip.sixtofour is not None:
            return ip.sixtofour, "6to4 for"
    return ip, ""


def _address_class(ip: IPAddress) -> Optional[str]:
    """The class that keeps ``ip`` from being reached, or None for a globally reachable unicast address."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip == _BROADCAST:
        return "broadcast"
    if ip.is_loopback:  # before is_reserved: ::1 lies in the reserved ::/8
        return "loopback"
    if ip.is_reserved:
        return "reserved"
    if any(ip in net for net in _PRIVATE):
        return "private"
    if not ip.is_global or any(ip in net for net in _NOT_GLOBAL):
        return "special-purpose (not globally reachable)"
    return None


def is_blocked(ip: IPAddress, *, allow_private: bool) -> Optional[str]:
    """Why ``ip`` may not be reached ("<ip>, which is <class>"), or None if it may.

    An IPv6 address that carries an IPv4 one is judged by the IPv4 address: that is where it goes.
    """
    target, via = _carried_ipv4(ip)
    kind = _address_class(target)
    if kind is None or (allow_private and kind in _SWITCHABLE):
        return None
    if kind in _SWITCHABLE:
        kind += " (allowed only with OUTBOUND_ALLOW_PRIVATE=true)"
    shown = f"{ip} ({via} {target})" if via else str(ip)
    return f"{shown}, which is {kind}"


def _standard_ip(host: str) -> Optional[IPAddress]:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _ip_literal(host: str) -> Optional[IPAddress]:
    """``host`` read as a resolver reads it: every inet_aton spelling (``2852039166``, ``127.1``, ``0x7f.1``)."""
    standard = _standard_ip(host)
    if standard is not None:
        return standard
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def _connect_host(url: str) -> Optional[str]:
    """The host aiohttp will connect to: yarl maps ``１２７.０.０.１`` to ``127.0.0.1``, urlsplit does not."""
    try:
        return yarl.URL(url).host
    except ValueError:  # aiohttp cannot request it either
        return None


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse before connecting: a non-http(s) URL, userinfo, or a blocked IP literal in any spelling.

    Messages quote nothing of the URL but its host: the URL may carry credentials.
    """
    try:
        parts = urlsplit(url)
        written = parts.hostname
    except ValueError:  # its message quotes the netloc
        raise BlockedAddressError("refused: the URL cannot be parsed") from None
    if parts.scheme.lower() not in ("http", "https") or not written:
        raise BlockedAddressError("refused: the URL must be http(s)://host/...")
    if "@" in parts.netloc:
        raise BlockedAddressError("refused: the URL must not carry credentials")
    for spelling in (written, _connect_host(url) or written):
        literal = _ip_literal(spelling)
        reason = None if literal is None else is_blocked(literal, allow_private=allow_private)
        if reason:
            means = "" if _standard_ip(written) is not None else f"host {written} means "
            raise BlockedAddressError(f"refused: {means}{reason}")


def without_credentials(url: Optional[str]) -> Optional[str]:
    """``url`` with any ``user:pass@`` removed, for echoing it (status records, logs)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def find_refusal(exc: BaseException) -> Optional[BlockedAddressError]:
    """The guard's refusal behind ``exc``: aiohttp wraps a resolver's error in one whose text hides it."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if isinstance(current, BlockedAddressError):
            return current
        seen.add(id(current))
        linked = (current.__cause__, getattr(current, "os_error", None), *current.args)
        pending.extend(e for e in linked if isinstance(e, BaseException) and id(e) not in seen)
    return None


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` (aiohttp's default resolver unless given), then drops every blocked address.

    ``inner`` is injectable because aiohttp hands only names to a resolver, never IP literals:
    tests need a DNS they control to exercise this path.
    """

    def __init__(self, *, allow_private: bool, inner: Optional[AbstractResolver] = None) -> None:
        self.allow_private = allow_private
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed, reasons = [], []
        for result in results:
            reason = is_blocked(ipaddress.ip_address(result["host"]), allow_private=self.allow_private)
            if reason:
                reasons.append(reason)
            else:
                allowed.append(result)
        if reasons and not allowed:
            raise BlockedAddressError(f"refused: {host} resolves to {reasons[0]}")
        if not allowed:  # aiohttp cannot handle an empty answer
            raise OSError(f"{host}: the resolver returned no address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def make_guarded_session(*, allow_private: bool, timeout: float, inner_resolver: Optional[AbstractResolver] = None,
                         **kwargs: Any) -> aiohttp.ClientSession:
    """A session whose every connection to a name is checked; ``inner_resolver`` replaces DNS (tests)."""
    resolver = GuardedResolver(allow_private=allow_private, inner=inner_resolver)
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout),
                                 auto_decompress=True, **kwargs)
