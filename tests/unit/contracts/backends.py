"""The Redis clients the contract suites run their Redis backends on: one of the module's server, emptied first,
and one that cannot reach any server (the failure every Redis backend must report as ``StorageUnavailable``)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kontext.redis_client import CancellableRedis, connect
from tools.redis_server import free_port


async def fresh_redis_client(request: pytest.FixtureRequest) -> Any:
    """A client of the module's ``module_redis_server`` (the project's connection settings), emptied. The caller
    closes it. (A parametrized fixture can reach only sync fixtures by name, hence not ``fresh_redis``.)"""
    client = connect(request.getfixturevalue("module_redis_server").url)
    await client.flushall()
    return client


def unreachable_redis() -> Any:
    """A client of a loopback port nothing listens on: every command fails at once (no retries)."""
    return CancellableRedis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1,
                                     retry=Retry(NoBackoff(), 0))
