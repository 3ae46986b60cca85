"""The libraries a run imports are the ones it claims: proof that the older-stack leg's overlay is active."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXPECT_ENV = "KONTEXT_EXPECT_STACK"
"""A pins file (``name==version`` lines); scripts/test_older_stack.sh sets it to constraints/older-stack.txt."""

MODULES = ("transformers", "tokenizers", "huggingface_hub", "diffusers")

_CHILD = ("import importlib.util, json, sys; "
          "print(json.dumps({m: importlib.util.find_spec(m).origin for m in sys.argv[1:]}))")
"""Where a child process would import each module from (found, not run: importing diffusers costs seconds)."""


def imported_versions() -> dict[str, str]:
    return {name: importlib.import_module(name).__version__ for name in MODULES}


def pinned_versions(pins: Path) -> dict[str, str]:
    """``huggingface-hub==0.36.0`` -> ``{"huggingface_hub": "0.36.0"}``, comments and blanks skipped."""
    pinned = {}
    for line in pins.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pinned[name.strip().lower().replace("-", "_")] = version.strip()
    return pinned


def test_child_processes_import_the_same_libraries() -> None:
    """The end-to-end tests' sidecars are child processes: the overlay must reach them (via PYTHONPATH). The same
    files as this process imported, so the same versions."""
    child = subprocess.run([sys.executable, "-c", _CHILD, *MODULES], capture_output=True, text=True, check=True,
                           env=dict(os.environ))
    assert json.loads(child.stdout) == {name: importlib.import_module(name).__file__ for name in MODULES}


@pytest.mark.skipif(not os.environ.get(EXPECT_ENV), reason="only the older-stack leg names the stack it expects")
def test_the_pinned_versions_are_the_ones_imported() -> None:
    pinned = pinned_versions(Path(os.environ[EXPECT_ENV]))
    assert set(pinned) == set(MODULES), pinned
    assert imported_versions() == pinned
