"""pm2 process files: every app stops gracefully within its kill_timeout, and every pm2 command the docs show
uses a process file (pm2's own default kill timeout, 1.6 s, would SIGKILL the running job)."""

from __future__ import annotations

import re
from pathlib import Path

from kontext.http.serve import HANDLER_SHUTDOWN_SECONDS
from kontext.jobs.worker import THREAD_EXIT_SECONDS
from neurons.settings import NeuronSettings

ROOT = Path(__file__).resolve().parents[2]
PROCESS_FILES = sorted(ROOT.glob("ecosystem*.config.js"))


def _apps(path: Path) -> list[tuple[str, int]]:
    """(name, kill_timeout ms) of each app, read from the file's text."""
    text = path.read_text()
    blocks = re.split(r"\n\s*\{\s*\n\s*name:", text)[1:]
    apps = []
    for block in blocks:
        name = re.match(r'\s*"([^"]+)"', block)
        timeout = re.search(r"kill_timeout:\s*(\d+)", block)
        assert name, f"{path.name}: an app without a name"
        assert timeout, f"{path.name}: app {name.group(1)} sets no kill_timeout"
        apps.append((name.group(1), int(timeout.group(1))))
    return apps


def test_every_app_outlasts_the_whole_graceful_stop() -> None:
    settings = NeuronSettings(_env_file=None)  # type: ignore[call-arg]
    stop = (settings.shutdown_grace_seconds + THREAD_EXIT_SECONDS + HANDLER_SHUTDOWN_SECONDS
            + settings.callback_timeout_seconds)
    apps = [app for path in PROCESS_FILES for app in _apps(path)]
    assert {name for name, _ in apps} >= {"kontext-miner", "kontext-door", "kontext-worker"}
    for name, timeout_ms in apps:
        assert timeout_ms / 1000 > stop, f"{name}: kill_timeout {timeout_ms} ms, but a stop may take {stop:g} s"


def test_every_pm2_command_in_the_docs_uses_a_process_file() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *PROCESS_FILES]
    for document in documents:
        for line in document.read_text().splitlines():
            for command in re.findall(r"pm2 (?:start|restart)\s+(\S+)", line):
                assert command.startswith("ecosystem") or "--kill-timeout" in line, f"{document.name}: {line.strip()}"
