"""One Redis client per process, and the one way its connection failures reach callers: a 503."""

from __future__ import annotations

import functools
from typing import Any, Callable, Coroutine, ParamSpec, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from kontext.errors import StorageUnavailable

T = TypeVar("T")
P = ParamSpec("P")

UNREACHABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, ConnectionError, OSError)


RETRIES = 6
"""Per command, on a lost connection: a Redis restart (or a pooled connection it closed) is ridden over
in a few seconds (backoff 0.05 s doubling, capped at 1 s) before a caller sees a 503."""


def connect(url: str) -> Any:
    """A client with bytes responses, short socket timeouts, and retries that ride over a restart."""
    return Redis.from_url(url, decode_responses=False, socket_connect_timeout=3, socket_timeout=10,
                          health_check_interval=15,
                          retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
                          retry_on_error=[redis_errors.ConnectionError, redis_errors.TimeoutError])


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
