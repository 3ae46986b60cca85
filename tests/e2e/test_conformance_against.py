"""`kontext-client conformance --against URL`: the same case on two miners, compared byte for byte. Three
sidecars run in this process (the Runtime behind aiohttp, each on its own loop): two with one recipe, one with
the other."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Iterator

import pytest
import requests
from PIL import Image

from kontext.client.cli import main
from kontext.http.app import create_app
from kontext.runtime import Runtime
from tests.e2e.servers import ThreadedApp
from tests.unit.test_sidecar import make_settings
from tests.waiting import until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sidecars(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """name -> base URL: "a" and "b" run kontext-v1, "reference" runs reference-v1."""
    servers = {}
    try:
        for name, recipe in (("a", "kontext-v1"), ("b", "kontext-v1"), ("reference", "reference-v1")):
            settings = make_settings(tmp_path_factory.mktemp(name), kontext_model_path=str(tiny_model_dir),
                                     kontext_local_files_only=True, kontext_devices="cpu", kontext_recipe=recipe,
                                     kontext_self_check=False)
            servers[name] = ThreadedApp(lambda s=settings: create_app(Runtime(s), manage_runtime=True)).start()

        async def all_ready() -> bool:
            states = [requests.get(f"{server.url}/health", timeout=5).json()["services"]["kontext_edit"]
                      for server in servers.values()]
            assert "failed" not in states, states
            return all(state == "ready" for state in states)

        asyncio.run(until(all_ready, timeout=180, what="three engines ready"))
        yield {name: server.url for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    """One small case whose input is a file beside the case file (sent inline to both miners)."""
    buffer = io.BytesIO()
    Image.new("RGB", (80, 48), (30, 160, 90)).save(buffer, format="PNG")
    (tmp_path / "in.png").write_bytes(buffer.getvalue())
    case = {"name": "small", "image_file": "in.png", "request": {
        "prompt": "Add a red hat", "seed": 11, "width": 64, "height": 64, "num_inference_steps": 2,
        "guidance_scale": 4.0, "image_url": "https://validator.example/in.png"}}
    (tmp_path / "cases.jsonl").write_text(json.dumps(case) + "\n")
    return tmp_path / "cases.jsonl"


def test_the_same_recipe_gives_the_same_bytes(capsys, sidecars: dict[str, str], cases: Path) -> None:
    main(["--url", sidecars["a"], "conformance", str(cases), "--against", sidecars["b"]])
    first, last = capsys.readouterr().out.splitlines()
    verdict, hashes = first.split(": ", 1)
    assert verdict == "EQUAL     small"
    this, other = (part.split("=", 1)[1] for part in hashes.split())
    assert this == other and len(this) == 64
    assert last == f"1/1 case(s) give the same PNG bytes on {sidecars['a']} (this) and {sidecars['b']} (other)"


def test_another_recipe_is_reported_with_both_hashes_and_exit_1(capsys, sidecars: dict[str, str],
                                                               cases: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--url", sidecars["a"], "conformance", str(cases), "--against", sidecars["reference"]])
    assert exited.value.code == 1
    first, last = capsys.readouterr().out.splitlines()
    assert first.startswith("DIFFERENT small: this=") and last.startswith("0/1 case(s) give the same PNG bytes")
    this, other = (part.split("=", 1)[1] for part in first.split(": ", 1)[1].split())
    assert this != other and len(this) == len(other) == 64
