"""The outbound address guard: address classes, URL host spellings, and names through the resolver."""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest
from aiohttp import web

from kontext.delivery.guard import (BlockedAddressError, GuardedResolver, check_url, find_refusal, is_blocked,
                                   make_guarded_session)
from tests.fakes import TableResolver

PRIVATE_OFF = "(allowed only with OUTBOUND_ALLOW_PRIVATE=true)"


@pytest.mark.parametrize("address, allow_private, blocked", [
    ("169.254.169.254", True, True),     # cloud metadata: always
    ("fe80::1", True, True),
    ("224.0.0.1", True, True),
    ("ff02::1", True, True),
    ("0.0.0.0", True, True),
    ("::", True, True),
    ("255.255.255.255", True, True),
    ("240.0.0.1", True, True),
    ("::ffff:169.254.169.254", True, True),
    ("64:ff9b::a9fe:a9fe", True, True),  # NAT64 of the metadata address
    ("2002:a9fe:a9fe::1", True, True),   # 6to4 of the metadata address
    ("198.18.0.1", True, True),          # benchmarking
    ("192.0.0.192", True, True),         # IETF protocol assignments (Oracle Cloud metadata)
    ("192.0.2.1", True, True),           # documentation
    ("2001:db8::1", True, True),
    ("0.1.2.3", True, True),             # "this network"
    ("64:ff9b:1::1", True, True),        # local-use NAT64: global to ipaddress before 3.11.10
    ("3fff::1", True, True),             # documentation (RFC 9637)
    ("fec0::1", True, True),             # deprecated site-local: global to ipaddress
    ("127.0.0.1", False, True),
    ("::1", False, True),
    ("10.1.2.3", False, True),
    ("172.16.0.1", False, True),
    ("192.168.1.1", False, True),
    ("100.64.0.1", False, True),
    ("fd00::1", False, True),
    ("::ffff:127.0.0.1", False, True),
    ("64:ff9b::a00:1", False, True),     # NAT64 of 10.0.0.1
    ("2002:c0a8:101::", False, True),    # 6to4 of 192.168.1.1
    ("127.0.0.1", True, False),
    ("::1", True, False),
    ("10.1.2.3", True, False),
    ("100.64.0.1", True, False),
    ("fd00::1", True, False),
    ("::ffff:127.0.0.1", True, False),
    ("8.8.8.8", False, False),
    ("2606:4700::1111", False, False),
    ("::ffff:8.8.8.8", False, False),
    ("64:ff9b::808:808", False, False),  # NAT64 of a public address is that public address
    ("2002:808:808::", False, False),
])
def test_address_guard(address: str, allow_private: bool, blocked: bool) -> None:
    assert (is_blocked(ipaddress.ip_address(address), allow_private=allow_private) is not None) is blocked


@pytest.mark.parametrize("address, allow_private, reason", [
    ("169.254.169.254", True, "169.254.169.254, which is link-local"),
    ("fe80::1", True, "fe80::1, which is link-local"),
    ("::ffff:a9fe:a9fe", True, "::ffff:a9fe:a9fe (IPv4-mapped 169.254.169.254), which is link-local"),
    ("64:ff9b::a9fe:a9fe", True, "64:ff9b::a9fe:a9fe (NAT64 for 169.254.169.254), which is link-local"),
    ("2002:a9fe:a9fe::", True, "2002:a9fe:a9fe:: (6to4 for 169.254.169.254), which is link-local"),
    ("224.0.0.1", True, "224.0.0.1, which is multicast"),
    ("::", True, "::, which is unspecified"),
    ("255.255.255.255", True, "255.255.255.255, which is broadcast"),
    ("240.0.0.1", True, "240.0.0.1, which is reserved"),
    ("198.18.0.1", True, "198.18.0.1, which is special-purpose (not globally reachable)"),
    ("127.0.0.1", False, f"127.0.0.1, which is loopback {PRIVATE_OFF}"),
    ("100.64.0.1", False, f"100.64.0.1, which is private {PRIVATE_OFF}"),
])
def test_reason_names_the_class(address: str, allow_private: bool, reason: str) -> None:
    assert is_blocked(ipaddress.ip_address(address), allow_private=allow_private) == reason


@pytest.mark.parametrize("host", [
    "2852039166",              # one decimal number
    "0251.0376.0251.0376",     # octal parts
    "0xa9fea9fe",              # one hex number
    "0xa9.0xfe.0xa9.0xfe",
    "169.254.43518",           # a.b.c with a 16-bit tail
    "169.16689662",            # a.b with a 24-bit tail
    "[::ffff:a9fe:a9fe]",
    "１６９.２５４.１６９.２５４",  # full-width digits: aiohttp (IDNA) connects to 169.254.169.254
    "169。254。169。254",        # ideographic full stops: likewise
    "\U0001fbf1\U0001fbf6\U0001fbf9.254.169.254",  # segmented digits: yarl maps them, the idna codec does not
])
def test_every_ipv4_spelling_is_read_as_its_address(host: str) -> None:
    with pytest.raises(BlockedAddressError, match=r"169\.254\.169\.254\)?, which is link-local$"):
        check_url(f"http://{host}/latest/meta-data", allow_private=True)


@pytest.mark.parametrize("host", ["127.1", "0x7f.1", "2130706433", "017700000001"])
def test_short_loopback_spellings_are_loopback(host: str) -> None:
    with pytest.raises(BlockedAddressError, match=rf"refused: host {host} means 127\.0\.0\.1, which is loopback"):
        check_url(f"http://{host}:8080/hook", allow_private=False)
    check_url(f"http://{host}:8080/hook", allow_private=True)


@pytest.mark.parametrize("url", ["http://8.8.8.8/", "http://134744072/", "http://0x08080808/", "https://example.com/x",
                                 "http://[2606:4700::1111]:8080/", "http://1.2.3.4.example/"])
def test_public_hosts_and_names_pass(url: str) -> None:
    check_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///path", "http://169.254.169.254/",
                                 "http://[::ffff:a9fe:a9fe]/latest", "http://[64:ff9b::a9fe:a9fe]/latest"])
def test_urls_refused_before_connecting(url: str) -> None:
    with pytest.raises(BlockedAddressError, match="^refused: "):
        check_url(url, allow_private=True)


@pytest.mark.parametrize("url", [
    "http://alice:hunter2@example.com/hook",
    "http://alice@example.com/hook",
    "http://:hunter2@example.com/hook",
    "ftp://alice:hunter2@example.com/hook",
    "http:/alice:hunter2@example.com/hook",        # no host: the old message echoed the URL
    "alice:hunter2@example.com/hook",               # no scheme: urlsplit reads "alice" as the scheme
    "http://alice:hunter2@exa\u2100mple.com/hook",  # urlsplit's own ValueError quotes the netloc
    "http://alice:hunter2@[::1/hook",
])
def test_refusals_never_echo_credentials(url: str) -> None:
    with pytest.raises(BlockedAddressError) as info:
        check_url(url, allow_private=True)
    assert "alice" not in str(info.value) and "hunter2" not in str(info.value)


NAMES = {
    "metadata.test": ["169.254.169.254"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    "sixtofour.test": ["2002:a9fe:a9fe::"],
    "benchmark.test": ["198.18.0.1"],
    "intranet.test": ["10.0.0.7"],
    "public.test": ["93.184.216.34"],
    "mixed.test": ["10.0.0.7", "93.184.216.34"],
}


@pytest.mark.parametrize("name, allow_private, reason", [
    ("metadata.test", True, "refused: metadata.test resolves to 169.254.169.254, which is link-local"),
    ("nat64.test", True,
     "refused: nat64.test resolves to 64:ff9b::a9fe:a9fe (NAT64 for 169.254.169.254), which is link-local"),
    ("sixtofour.test", True,
     "refused: sixtofour.test resolves to 2002:a9fe:a9fe:: (6to4 for 169.254.169.254), which is link-local"),
    ("benchmark.test", True,
     "refused: benchmark.test resolves to 198.18.0.1, which is special-purpose (not globally reachable)"),
    ("intranet.test", False, f"refused: intranet.test resolves to 10.0.0.7, which is private {PRIVATE_OFF}"),
])
async def test_resolver_refuses_names_by_their_addresses(name: str, allow_private: bool, reason: str) -> None:
    resolver = GuardedResolver(allow_private=allow_private, inner=TableResolver(NAMES))
    with pytest.raises(BlockedAddressError) as info:
        await resolver.resolve(name, 443)
    assert str(info.value) == reason


@pytest.mark.parametrize("name, allow_private, addresses", [
    ("public.test", False, ["93.184.216.34"]),
    ("mixed.test", False, ["93.184.216.34"]),  # the private answer is dropped, the public one kept
    ("mixed.test", True, ["10.0.0.7", "93.184.216.34"]),
    ("intranet.test", True, ["10.0.0.7"]),
])
async def test_resolver_keeps_allowed_addresses(name: str, allow_private: bool, addresses: list[str]) -> None:
    results = await GuardedResolver(allow_private=allow_private, inner=TableResolver(NAMES)).resolve(name, 443)
    assert [r["host"] for r in results] == addresses and all(r["port"] == 443 for r in results)


async def test_an_empty_answer_is_an_error_not_a_refusal() -> None:
    resolver = GuardedResolver(allow_private=True, inner=TableResolver({"empty.test": []}))
    with pytest.raises(OSError, match="empty.test: the resolver returned no address") as info:
        await resolver.resolve("empty.test", 80)
    assert not isinstance(info.value, BlockedAddressError)


async def test_localhost_through_the_default_resolver() -> None:
    with pytest.raises(BlockedAddressError, match=r"^refused: localhost resolves to 127\.0\.0\.1, which is loopback"):
        await GuardedResolver(allow_private=False).resolve("localhost", 80)
    results = await GuardedResolver(allow_private=True).resolve("localhost", 80)
    assert [r["host"] for r in results] == ["127.0.0.1"]


@pytest.fixture
async def target(aiohttp_server):
    """A loopback server that counts the requests that reached it."""
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.host)
        return web.Response(text="hit")

    app = web.Application()
    app.router.add_get("/", handle)
    server = await aiohttp_server(app)
    server.hits = hits
    return server


async def _get(url: str, resolver: TableResolver | None, *, allow_private: bool) -> str:
    async with make_guarded_session(allow_private=allow_private, timeout=3, inner_resolver=resolver) as session:
        async with session.get(url, headers={"Connection": "close"}) as response:
            return await response.text()


async def test_session_reaches_names_the_guard_allows(target) -> None:
    resolver = TableResolver({"receiver.test": ["127.0.0.1"]})
    assert await _get(f"http://receiver.test:{target.port}/", resolver, allow_private=True) == "hit"
    assert resolver.asked == ["receiver.test"] and target.hits == [f"receiver.test:{target.port}"]
    assert await _get(f"http://localhost:{target.port}/", None, allow_private=True) == "hit"


@pytest.mark.parametrize("name, answer, allow_private", [
    ("receiver.test", "127.0.0.1", False),
    ("metadata.test", "169.254.169.254", True),
    ("nat64.test", "64:ff9b::7f00:1", False),  # NAT64 of the loopback server
    ("localhost", None, False),                 # the default resolver
])
async def test_session_refuses_names_without_connecting(target, name: str, answer: str | None,
                                                        allow_private: bool) -> None:
    resolver = TableResolver({name: [answer]}) if answer else None
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await _get(f"http://{name}:{target.port}/", resolver, allow_private=allow_private)
    assert str(find_refusal(info.value)).startswith(f"refused: {name} resolves to ")
    assert target.hits == [] and (resolver is None or resolver.asked == [name])


async def test_each_connection_resolves_again(target) -> None:
    """DNS rebinding: a name that moves to a blocked address after its first use is refused."""
    resolver = TableResolver({"flip.test": ["127.0.0.1"]})
    async with make_guarded_session(allow_private=True, timeout=3, inner_resolver=resolver) as session:
        url = f"http://flip.test:{target.port}/"
        async with session.get(url, headers={"Connection": "close"}) as response:
            assert await response.text() == "hit"
        resolver.answers["flip.test"] = ["169.254.169.254"]
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await session.get(url)
    assert str(find_refusal(info.value)) == "refused: flip.test resolves to 169.254.169.254, which is link-local"
    assert resolver.asked == ["flip.test", "flip.test"] and len(target.hits) == 1
