"""What the README and docs/ tell an operator to type works: each project command line parses with the command's
own parser, the Python they show compiles, the .env lines they show are settings, and the README's "Try it"
snippet runs verbatim (but for the port) against the sidecar."""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from kontext.http.app import create_app
from kontext.runtime import Runtime
from kontext.settings import Settings
from kontext.settings_load import DEPRECATED
from neurons.settings import NeuronSettings
from tests.fakes import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
HEREDOC = re.compile(r"python - <<'EOF'\n(.*?)^EOF$", re.MULTILINE | re.DOTALL)
SHELL_VARIABLES = {"MINER_HOTKEY"}
COMMAND = re.compile(r"(?:^|[\s/])kontext-(?:client|commit|neuron|sidecar|worker)(?:\s|$)")


def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from kontext.client.cli import build_parser as client
    from kontext.main import build_parser as sidecar
    from kontext.worker_main import build_parser as worker
    from neurons.commit import build_parser as commit
    from neurons.config import build_parser as neuron

    return {"kontext-client": client, "kontext-commit": commit, "kontext-neuron": neuron,
            "kontext-sidecar": sidecar, "kontext-worker": worker}


def _command_lines() -> Iterator[tuple[str, str, list[str]]]:
    """(document, line, argv after the command) of each project command in a code block, continuations joined."""
    for document in DOCUMENTS:
        for block in FENCE.findall(document.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if not COMMAND.search(line.split("#", 1)[0]):
                    continue
                tokens = shlex.split(line, comments=True)
                while tokens and re.match(r"[A-Z_][A-Z0-9_]*=", tokens[0]):  # VAR=value before the command
                    tokens = tokens[1:]
                name = tokens[0].rsplit("/", 1)[-1] if tokens else ""
                if name in _parsers():
                    rest = tokens[1:]
                    for stop in ("&&", "||", "|", ";", ">", ">>"):
                        rest = rest[:rest.index(stop)] if stop in rest else rest
                    yield document.name, line.strip(), [name, *rest]


def test_the_documents_show_every_command() -> None:
    shown = {argv[0] for _, _, argv in _command_lines()}
    assert {"kontext-client", "kontext-commit"} <= shown, shown


@pytest.mark.parametrize("document, line, argv", list(_command_lines()),
                         ids=[f"{document}-{argv[0]}-{n}" for n, (document, _, argv) in enumerate(_command_lines())])
def test_each_command_line_parses(document: str, line: str, argv: list[str],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A flag renamed or dropped in the code makes this fail with the command's own one-line error."""
    if "--help" in argv or "-h" in argv:
        return
    try:
        _parsers()[argv[0]]().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{document}: `{line}` does not parse: {capsys.readouterr().err.strip()}")


def test_the_python_the_readme_shows_compiles() -> None:
    snippets = HEREDOC.findall(README) + re.findall(r'python -c "([^"]+)"', README)
    assert len(snippets) >= 3
    for snippet in snippets:
        compile(snippet, "README.md", "exec")


def test_the_env_lines_the_readme_shows_are_settings() -> None:
    keys = {name.upper() for name in NeuronSettings.model_fields} | set(DEPRECATED) | SHELL_VARIABLES
    for block in FENCE.findall(README):
        for key in re.findall(r"^([A-Z][A-Z0-9_]+)=", block, re.MULTILINE):
            assert key in keys, f"README: {key} is not a setting"


def test_the_try_it_snippet_uses_the_venv_and_the_sidecars_port() -> None:
    """The system python has no Pillow; run_local.sh serves MINER_SERVER_PORT's default."""
    assert "\n.venv/bin/python - <<'EOF'\n" in README
    port = Settings.model_fields["miner_server_port"].default
    assert f"http://127.0.0.1:{port}" in HEREDOC.findall(README)[0]
    assert "MINER_SERVER_PORT:-8091" in (ROOT / "scripts" / "run_local.sh").read_text()


async def test_the_try_it_snippet_runs_against_the_sidecar(aiohttp_server: Any, tmp_path: Path) -> None:
    """The README's snippet, with only the port changed, against the real app, runtime and worker (a fake engine)."""
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", kontext_devices="cpu",  # type: ignore[call-arg]
                        retention_sweep_seconds=3600)
    server = await aiohttp_server(create_app(Runtime(settings, engine=FakeEngine()), manage_runtime=True))
    snippet = HEREDOC.findall(README)[0].replace("127.0.0.1:8091", f"127.0.0.1:{server.port}")
    process = await asyncio.create_subprocess_exec(sys.executable, "-", stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(snippet.encode()), 60)
    assert process.returncode == 0, err.decode()
    accepted, finished = out.decode().splitlines()[-2:]
    assert "'accepted': True" in accepted
    assert finished.startswith("completed ") and "/images/edits/edit-" in finished
