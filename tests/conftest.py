"""Session fixtures shared by every suite: offline hub, and the tiny real Kontext model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real FluxKontextPipeline saved with save_pretrained, built once per session.

    ``KONTEXT_TINY_MODEL_DIR`` reuses (or builds into) a fixed directory across sessions.
    """
    from tools.tiny_kontext import build_tiny_kontext, is_complete

    fixed = os.environ.get("KONTEXT_TINY_MODEL_DIR")
    target = Path(fixed) if fixed else tmp_path_factory.mktemp("models") / "tiny-kontext"
    if not is_complete(target):
        build_tiny_kontext(target)
    return target


@pytest.fixture
def redis_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real redis-server of its own (AOF on), on a free loopback port; stopped after the test."""
    from tools.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
