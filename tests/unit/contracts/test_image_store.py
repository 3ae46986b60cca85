"""The ``ImageStore`` contract, run on both backends (files in a data directory; a real Redis, one per module):
inputs and results round trip and are removed, a missing image is None, and a storage failure (a full or
unreadable disk, an unreachable Redis) is ``StorageUnavailable`` with its reason, never an ``OSError``."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from kontext.errors import StorageUnavailable
from kontext.media.files import ImageFiles, ImageStore
from tests.unit.contracts.backends import fresh_redis_client, unreachable_redis

RETENTION_SECONDS = 3600.0


@pytest.fixture(params=["files", "redis"])
async def images(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "files":
        store: Any = ImageFiles(tmp_path / "inputs", tmp_path / "edits")
        store.prepare()
        yield store
        return
    from kontext.media.redis_files import RedisImageStore

    client = await fresh_redis_client(request)
    store = RedisImageStore(client, retention_seconds=RETENTION_SECONDS)
    store.prepare()
    yield store
    await client.aclose()


async def test_inputs_and_results_round_trip_and_are_removed(images: ImageStore) -> None:
    assert await images.read_input("j") is None and await images.read_result("j") is None
    assert not await images.has_input("j") and not await images.has_result("j")
    await images.write_input("j", b"input bytes")
    await images.write_result("j", b"\x89PNG result")
    assert await images.read_input("j") == b"input bytes" and await images.has_input("j")
    assert await images.read_result("j") == b"\x89PNG result" and await images.has_result("j")
    await images.write_input("j", b"replaced")
    assert await images.read_input("j") == b"replaced"
    await images.remove_input("j")
    assert await images.read_input("j") is None and await images.read_result("j") == b"\x89PNG result"
    await images.remove_all("j")
    assert await images.read_result("j") is None and not await images.has_result("j")
    await images.remove_input("never-written")  # removing what is not there is no error
    await images.remove_all("never-written")


@pytest.fixture(params=["files", "redis"])
async def refusing_images(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    """A store whose storage refuses writes, and why: a full disk; a Redis that cannot be reached."""
    if request.param == "files":
        images = ImageFiles(tmp_path / "inputs", tmp_path / "edits")
        images.prepare()

        def no_space(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", no_space)
        yield images, "No space left on device"
        return
    from kontext.media.redis_files import RedisImageStore

    client = unreachable_redis()
    yield RedisImageStore(client, retention_seconds=RETENTION_SECONDS), "unreachable"
    await client.aclose()


async def test_a_refused_write_is_storage_unavailable_with_the_reason(refusing_images: Any) -> None:
    """ImageFiles let the OSError through; its callers each caught OSError as well as StorageUnavailable."""
    images, reason = refusing_images
    for write in (images.write_input, images.write_result):
        with pytest.raises(StorageUnavailable, match=reason):
            await write("j", b"bytes")
    if isinstance(images, ImageFiles):  # nothing half-written is left, not even a temp file
        assert list(images.inputs_dir.iterdir()) == [] and list(images.results_dir.iterdir()) == []


async def test_an_unreadable_file_is_storage_unavailable(tmp_path: Path, monkeypatch) -> None:
    images = ImageFiles(tmp_path / "inputs", tmp_path / "edits")
    images.prepare()
    await images.write_input("j", b"bytes")

    def refused(self: Path) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refused)
    with pytest.raises(StorageUnavailable, match="Permission denied"):
        await images.read_input("j")


async def test_a_data_directory_that_cannot_be_made_is_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("where the data directory should be")
    with pytest.raises(StorageUnavailable):
        ImageFiles(blocker / "inputs", blocker / "edits").prepare()


async def test_an_unreachable_redis_is_storage_unavailable() -> None:
    from kontext.media.redis_files import RedisImageStore

    client = unreachable_redis()
    images = RedisImageStore(client, retention_seconds=RETENTION_SECONDS)
    try:
        for call in (lambda: images.write_input("j", b"x"), lambda: images.read_input("j"),
                     lambda: images.has_input("j"), lambda: images.write_result("j", b"x"),
                     lambda: images.read_result("j"), lambda: images.has_result("j"),
                     lambda: images.remove_input("j"), lambda: images.remove_all("j")):
            with pytest.raises(StorageUnavailable, match="unreachable"):
                await call()
    finally:
        await client.aclose()
