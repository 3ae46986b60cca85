"""Downloads a request's ``image_url`` with the address guard, a timeout and a size cap."""

from __future__ import annotations

import asyncio
from urllib.parse import urljoin

import aiohttp

from kontext.delivery.guard import BlockedAddressError, check_url, find_refusal

MAX_REDIRECTS = 3
CHUNK = 64 * 1024


class ImageFetchError(Exception):
    """The download failed; the message names ``image_url`` and is safe to show."""


async def fetch_image(session: aiohttp.ClientSession, url: str, *, max_bytes: int, timeout: float,
                      allow_private: bool) -> bytes:
    """GET ``url`` (each redirect hop re-checked), streaming at most ``max_bytes``."""
    try:
        # asyncio.wait_for, not asyncio.timeout: the latter is Python 3.11+, and 3.10 is supported.
        return await asyncio.wait_for(_follow(session, url, max_bytes=max_bytes, allow_private=allow_private),
                                      timeout)
    except ImageFetchError:
        raise
    except (asyncio.TimeoutError, TimeoutError):
        raise ImageFetchError(f"image_url: download timed out after {timeout:g}s") from None
    except (BlockedAddressError, aiohttp.ClientError) as exc:
        refusal = find_refusal(exc)
        detail = str(refusal) if refusal else f"download failed: {type(exc).__name__}: {exc}"
        raise ImageFetchError(f"image_url: {detail}"[:300]) from None


async def _follow(session: aiohttp.ClientSession, url: str, *, max_bytes: int, allow_private: bool) -> bytes:
    """The download itself: every redirect hop is re-checked by the address guard before it is followed."""
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, allow_private=allow_private)
        async with session.get(url, allow_redirects=False) as response:
            if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                url = urljoin(url, response.headers["Location"])
                continue
            if response.status != 200:
                raise ImageFetchError(f"image_url: download failed: HTTP {response.status}")
            return await _read_capped(response, max_bytes)
    raise ImageFetchError(f"image_url: more than {MAX_REDIRECTS} redirects")


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise ImageFetchError(f"image_url: larger than {max_bytes} bytes")
    data = bytearray()
    async for chunk in response.content.iter_chunked(CHUNK):
        data.extend(chunk)
        if len(data) > max_bytes:
            raise ImageFetchError(f"image_url: larger than {max_bytes} bytes")
    return bytes(data)
