"""One Redis client per process, and the one way its connection failures reach callers: a 503."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Coroutine, ParamSpec, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from kontext.errors import StorageUnavailable

T = TypeVar("T")
P = ParamSpec("P")

UNREACHABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, ConnectionError, OSError)


RETRIES = 6
"""Per command, on a lost connection: a Redis restart (or a pooled connection it closed) is ridden over
in a few seconds (backoff 0.05 s doubling, capped at 1 s) before a caller sees a 503."""


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that was asked for but lost on the way.

    redis-py can finish a command although the task was cancelled mid-command: on Python 3.11 its
    ``asyncio.wait_for`` around each send drops a cancel that lands as the send completes (CPython
    gh-86296; redis/redis-py#2028). A worker's loop then never ends and a shutdown hangs. After each
    command, a task with a cancellation still pending is cancelled for real. (Python 3.10 has no
    ``Task.cancelling``; there this is a no-op.)
    """
    task = asyncio.current_task()
    if task is not None and getattr(task, "cancelling", lambda: 0)():
        raise asyncio.CancelledError()


class _CancellablePipeline(Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        result = await super().execute(raise_on_error)
        _raise_if_cancelled()
        return result


class CancellableRedis(Redis):
    """``redis.asyncio.Redis`` whose commands and pipelines never swallow their task's cancellation."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        result = await super().execute_command(*args, **options)
        _raise_if_cancelled()
        return result

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return _CancellablePipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def connect(url: str) -> Any:
    """A client with bytes responses, short socket timeouts, retries that ride over a restart, and
    cancellation that is never lost."""
    return CancellableRedis.from_url(url, decode_responses=False, socket_connect_timeout=3, socket_timeout=10,
                          health_check_interval=15,
                          retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
                          retry_on_error=[redis_errors.ConnectionError, redis_errors.TimeoutError])


def guarded(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn a lost connection to Redis, or a command it refuses (OOM at ``maxmemory``, MISCONF when its AOF
    cannot be written, READONLY on a replica), into ``StorageUnavailable`` (the doors answer 503 with a retry hint), never a 500."""
    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except UNREACHABLE as exc:
            raise StorageUnavailable(f"the job store (Redis) is unreachable: {type(exc).__name__}: {exc}"[:300], retry_after=5) from exc
        except redis_errors.RedisError as exc:
            raise StorageUnavailable(f"the job store (Redis) refused the command: {type(exc).__name__}: {exc}"[:300], retry_after=5) from exc

    return call
