"""Outbound address guard (SSRF): which hosts callbacks and image downloads may reach.

The check runs in the resolver, at connect time, so a hostname that resolves to a blocked
address is refused even if it resolved elsewhere a moment earlier (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_ALWAYS_BLOCKED = (
    ipaddress.ip_network("169.254.0.0/16"),  # link-local, includes the cloud metadata address
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("224.0.0.0/4"),
    ipaddress.ip_network("ff00::/8"),
    ipaddress.ip_network("240.0.0.0/4"),
    ipaddress.ip_network("255.255.255.255/32"),
    ipaddress.ip_network("::/128"),
)
_PRIVATE = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fc00::/7"),
)


class BlockedAddressError(OSError):
    """Raised at connect time; aiohttp reports it as a connection error."""


def is_blocked(ip: IPAddress, *, allow_private: bool) -> Optional[str]:
    """Why ``ip`` may not be reached, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for network in _ALWAYS_BLOCKED:
        if ip in network:
            return f"address {ip} is link-local, multicast or reserved"
    if not allow_private:
        for network in _PRIVATE:
            if ip in network:
                return f"address {ip} is loopback or private (CALLBACK_ALLOW_PRIVATE=false)"
    return None


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse before connecting: a non-http(s) scheme, userinfo, or a literal blocked address."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BlockedAddressError(f"URL must be http(s)://host/...: {url[:100]}")
    if parts.username or parts.password:
        raise BlockedAddressError("URL must not carry credentials")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    reason = is_blocked(literal, allow_private=allow_private)
    if reason:
        raise BlockedAddressError(reason)


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops every blocked address."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = DefaultResolver()

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
        if not allowed:
            raise BlockedAddressError(f"{host}: " + (reasons[0] if reasons else "no address"))
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def make_guarded_session(*, allow_private: bool, timeout: float, **kwargs: Any) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow_private=allow_private), use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout),
                                 auto_decompress=True, **kwargs)
