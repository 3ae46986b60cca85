"""Session fixtures shared by every suite: offline hub, and the tiny real Kontext model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LONGEST_FIRST = (
    "tests/e2e/test_reference_recipe.py", "tests/e2e/kontext_determinism/test_edit_workflow.py",
    "tests/e2e/test_scale.py", "tests/e2e/test_validator.py", "tests/unit/test_acceleration.py",
    "tests/unit/test_engine.py", "tests/unit/test_bench_scripts.py", "tests/unit/test_gpu_proof.py",
    "tests/e2e/test_neuron.py", "tests/unit/test_stack.py", "tests/unit/test_images.py", "tests/unit/test_hardening.py",
)
"""The files (or shared folders: their first file stands for them) that take longest, measured on two cores under
``scripts/test.sh``. Only the run order changes: ``scripts/test.sh`` hands pytest-xdist's workers a file at a time in
collection order (``--no-loadscope-reorder``: else xdist orders them by their number of tests), so the long ones go
first and the short ones fill the end, instead of one long file running alone at the end."""


SHARED_BY_FOLDER = ("tests/e2e/kontext_determinism/",)
"""Folders whose test files share a session-scoped server (the seed suite's miner process): under ``--dist
loadfile`` their files go to one worker as one unit, so that the server starts once, not once per worker."""


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent (and not called) without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile``, with each folder of ``SHARED_BY_FOLDER`` as one unit (xdist's own ``loadgroup`` marks do
    not group here). Any other ``--dist`` keeps xdist's scheduler."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ByFileOrSharedFolder(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:  # the method LoadFileScheduling itself overrides to group
            path = nodeid.split("::", 1)[0]
            return next((folder for folder in SHARED_BY_FOLDER if path.startswith(folder)), path)

    return ByFileOrSharedFolder(config, log)  # type: ignore[arg-type]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    root = Path(__file__).resolve().parents[1]

    def key(item: pytest.Item) -> int:
        return rank.get(Path(str(item.fspath)).resolve().relative_to(root).as_posix(), len(rank))

    items.sort(key=key)  # stable: the order within a file, and of the other files, stays


def _tiny_model(tmp_path_factory: pytest.TempPathFactory, *, fast: bool) -> Path:
    from tools.tiny_kontext import build_tiny_kontext, is_complete

    name = "tiny-kontext-fast" if fast else "tiny-kontext"
    fixed = os.environ.get("KONTEXT_TINY_MODEL_DIR")
    if fixed:
        target = Path(fixed + "-fast") if fast else Path(fixed)
    else:
        target = tmp_path_factory.mktemp("models") / name
    if not is_complete(target, fast=fast):
        build_tiny_kontext(target, fast=fast)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real FluxKontextPipeline saved with save_pretrained, built once per session: the ``fast`` build (a
    fifth to a third of the CPU time an edit takes on the golden one), for every test that pins no recorded bytes.

    ``KONTEXT_TINY_MODEL_DIR`` reuses (or builds into) a fixed directory across sessions (this one: its name with
    ``-fast`` added).
    """
    return _tiny_model(tmp_path_factory, fast=True)


@pytest.fixture(scope="session")
def golden_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model the golden files under tests/golden/ were recorded on (and ``scripts/run_local.sh`` serves):
    only for the tests that compare with recorded bytes. ``KONTEXT_TINY_MODEL_DIR``: as for ``tiny_model_dir``."""
    return _tiny_model(tmp_path_factory, fast=False)


@pytest.fixture
def redis_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real redis-server of its own (AOF on), on a free loopback port; stopped after the test."""
    from tools.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_redis_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One real redis-server (AOF on) for all the tests of a module: a start costs more than a test does. Tests
    that share it take ``fresh_redis``, which empties it first."""
    from tools.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def fresh_redis(module_redis_server):  # type: ignore[no-untyped-def]
    """A client of the module's ``module_redis_server``, emptied (FLUSHALL) and with its settings as started,
    before the test; closed after it."""
    from kontext.redis_client import connect

    redis = connect(module_redis_server.url)
    await redis.flushall()
    await redis.config_set("maxmemory", "0")
    yield redis
    await redis.aclose()


@pytest.fixture
async def redis_client(redis_server):  # type: ignore[no-untyped-def]
    """A client of ``redis_server`` (the project's own connection settings), closed after the test."""
    from kontext.redis_client import connect

    redis = connect(redis_server.url)
    yield redis
    await redis.aclose()
