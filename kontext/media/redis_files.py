"""Job images in Redis, for many hosts: any door serves any result, any worker reads any input."""

from __future__ import annotations

from typing import Any, Optional

from kontext.redis_client import guarded


PREFIX = "kontext:"


class RedisImageStore:
    """Implements ``ImageStore``. Results expire with the retention period (Redis drops them itself);
    inputs live until their job ends, at most as long."""

    def __init__(self, redis: Any, *, retention_seconds: float) -> None:
        self.redis = redis
        self.ttl = max(1, int(retention_seconds))

    def prepare(self) -> int:
        return 0  # nothing half-written can be left: a SET is atomic

    @guarded
    async def write_input(self, job_id: str, data: bytes) -> None:
        await self.redis.set(f"{PREFIX}input:{job_id}", data, ex=self.ttl)

    @guarded
    async def read_input(self, job_id: str) -> Optional[bytes]:
        return await self.redis.get(f"{PREFIX}input:{job_id}")

    @guarded
    async def has_input(self, job_id: str) -> bool:
        return bool(await self.redis.exists(f"{PREFIX}input:{job_id}"))

    @guarded
    async def write_result(self, job_id: str, png: bytes) -> None:
        await self.redis.set(f"{PREFIX}result:{job_id}", png, ex=self.ttl)

    @guarded
    async def read_result(self, job_id: str) -> Optional[bytes]:
        return await self.redis.get(f"{PREFIX}result:{job_id}")

    @guarded
    async def has_result(self, job_id: str) -> bool:
        return bool(await self.redis.exists(f"{PREFIX}result:{job_id}"))

    @guarded
    async def remove_input(self, job_id: str) -> None:
        await self.redis.delete(f"{PREFIX}input:{job_id}")

    @guarded
    async def remove_all(self, job_id: str) -> None:
        await self.redis.delete(f"{PREFIX}input:{job_id}", f"{PREFIX}result:{job_id}")

    @guarded
    async def older_than(self, cutoff: float) -> list[str]:
        return []  # every image carries its own expiry: nothing can be orphaned for longer
