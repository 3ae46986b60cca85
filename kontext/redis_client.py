"""One Redis client per process, and the one way its connection failures reach callers: a 503."""

from __future__ import annotations

import functools
from typing import Any, Callable, Coroutine, ParamSpec, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from kontext.errors import StorageUnavailable

T = TypeVar("T")
P = ParamSpec("P")

UNREACHABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, ConnectionError, OSError)


def connect(url: str) -> Any:
    """A client with bytes responses and short socket timeouts (an outage is noticed, not waited out)."""
    return Redis.from_url(url, decode_responses=False, socket_connect_timeout=3, socket_timeout=10,
                          health_check_interval=15)


def guarded(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn a lost connection to Redis into ``StorageUnavailable`` (503 + Retry-After), never a 500."""
    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except UNREACHABLE as exc:
            raise StorageUnavailable(f"the job store (Redis) is unreachable: {type(exc).__name__}: {exc}"[:300],
                                     headers={"Retry-After": "5"}) from exc

    return call
