"""What .env.example and docs/configuration.md promise about settings holds: every key documented, each
default shown is the real one, and the example works when copied."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kontext.errors import StartupError
from kontext.settings import Settings
from kontext.worker_main import WorkerSettings
from neurons.settings import NeuronSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / ".env.example").read_text()
SHOWN = dict(re.findall(r"^# ([A-Z0-9_]+)=(\S*)", EXAMPLE, re.MULTILINE))
"""Each key the example shows (commented), with the default it shows ('' where it shows none)."""


def _keys() -> set[str]:
    return {name.upper() for model in (Settings, NeuronSettings, WorkerSettings) for name in model.model_fields}


def _rendered(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def test_env_example_documents_every_setting_with_its_real_default() -> None:
    assert _keys() <= set(SHOWN), sorted(_keys() - set(SHOWN))
    assert set(SHOWN) <= _keys(), sorted(set(SHOWN) - _keys())  # nothing documented that is not a setting
    for key, shown in SHOWN.items():
        field = NeuronSettings.model_fields[key.lower()]
        if shown:
            assert shown == _rendered(field.default), f"{key}: .env.example shows {shown}, the default is {field.default}"


def test_env_example_works_when_copied(tmp_path: Path) -> None:
    """As copied, every line is a comment: the defaults, and no placeholder becomes live. With every default it
    shows uncommented, the same settings."""
    copied = tmp_path / ".env"
    copied.write_text(EXAMPLE)
    assert not re.search(r"^[A-Z]", EXAMPLE, re.MULTILINE)
    as_copied = NeuronSettings.load(copied)
    defaults = NeuronSettings(_env_file=None)  # type: ignore[call-arg]
    assert as_copied == defaults and as_copied.callback_not_before_seconds == 8.0
    uncommented = tmp_path / "all.env"
    uncommented.write_text("\n".join(f"{key}={value}" for key, value in SHOWN.items() if value))
    assert NeuronSettings.load(uncommented).model_dump() == defaults.model_dump()


@pytest.mark.parametrize("line", ["SERVICE_URL=http://your-public-ip:8091", "COMMIT_ADDRESS=miner.example.org",
                                  "AXON_CERTFILE=<path to fullchain.pem>"])
def test_a_placeholder_left_in_dot_env_stops_the_start(tmp_path: Path, line: str) -> None:
    env = tmp_path / ".env"
    env.write_text(line + "\n")
    with pytest.raises(StartupError, match=f"setting {line.split('=')[0]} still holds a placeholder"):
        NeuronSettings.load(env)


def test_docs_configuration_names_every_setting() -> None:
    section = (ROOT / "docs" / "configuration.md").read_text()
    missing = [key for key in sorted(_keys()) if f"`{key}`" not in section]
    assert not missing, missing


# --- README and docs/: a newcomer's documents, true to the code --------------------------------------------------

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
"""A markdown link's target: [text](target)."""
NOT_SETTINGS = {"ASYNC_MINER_URL", "ASYNC_CALLBACK_BASE_URL", "ASYNC_CALLBACK_BIND_HOST",  # the seed's e2e suite
                "CUBLAS_WORKSPACE_CONFIG", "HF_TOKEN", "KONTEXT_CONSTRAINTS", "MINER_HOTKEY"}
"""Upper-case names the documents may give that are not settings: process environment, shell variables."""


def _anchors(document: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", document.read_text(), re.MULTILINE):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_readme_is_short() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size < 30_000, f"README.md is {size} bytes: move detail to docs/"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_link_stays_in_the_repository_and_resolves(document: Path) -> None:
    """No link to ../shared (absent in a clone) or anywhere outside; each relative link names a file that exists,
    and each #anchor a heading of its file."""
    text = document.read_text()
    assert "../shared" not in text
    for target in LINK.findall(text):
        assert not re.match(r"[a-z][a-z0-9+.-]*:", target), f"{document.name}: link outside the repository: {target}"
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        assert linked.is_relative_to(ROOT), f"{document.name}: {target} leaves the repository"
        assert linked.is_file(), f"{document.name}: {target} names no file"
        if anchor:
            assert anchor in _anchors(linked), f"{document.name}: {target}: no such heading in {linked.name}"


def test_every_upper_case_name_the_documents_give_is_a_setting() -> None:
    """A setting renamed or removed in the code cannot live on in the documents (old names only as such)."""
    from kontext.settings_load import DEPRECATED

    known = _keys() | set(DEPRECATED) | NOT_SETTINGS
    for document in DOCUMENTS:
        names = set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)(?:=[^`]*)?`", document.read_text()))
        assert names <= known, f"{document.name}: not settings: {sorted(names - known)}"


def test_the_readme_names_each_installed_command() -> None:
    scripts = re.findall(r'"([a-z-]+)=[\w.]+:\w+"', (ROOT / "setup.py").read_text())
    assert {"kontext-neuron", "kontext-sidecar", "kontext-worker", "kontext-client", "kontext-commit"} <= set(scripts)
    readme = (ROOT / "README.md").read_text()
    for script in scripts:
        assert re.search(rf"^\| `{script}` \| \S", readme, re.MULTILINE), f"README's command table lacks {script}"
    alias = r"(?:^|[\s/`])kontext-miner\s+(?:--|edit|status|result|conformance|preflight)"
    assert not re.search(alias, readme, re.MULTILINE), "kontext-miner was the client's old name: kontext-client"


def test_docs_api_lists_every_error_code() -> None:
    from kontext.http import errors

    api = (ROOT / "docs" / "api.md").read_text()
    codes = {mapping.code for mapping in errors.ERRORS.values()} | set(errors._HTTP_CODES.values())
    codes |= {"internal_error", "http_error"}
    missing = sorted(code for code in codes if f"`{code}`" not in api)
    assert not missing, missing


def test_every_file_the_documents_name_exists() -> None:
    """A path from the repository's root in backticks (`kontext/jobs/worker.py`, `tests/e2e/test_neuron.py::test_x`)
    names a file that is there: a module moved or a test renamed takes its documents along."""
    tops = {path.name for path in ROOT.iterdir() if path.is_dir() and not path.name.startswith(".")}
    for document in DOCUMENTS:
        for path, test in re.findall(r"`([\w./-]+\.(?:py|sh|js|txt|jsonl|md|yml))(?:::(\w+))?`", document.read_text()):
            if path.split("/", 1)[0] not in tops or "<" in path:
                continue
            assert (ROOT / path).is_file(), f"{document.name}: `{path}` is not in the repository"
            if test:
                assert re.search(rf"def {test}\(", (ROOT / path).read_text()), f"{document.name}: no {path}::{test}"


def test_the_architecture_page_names_every_module() -> None:
    """The layout a newcomer reads is the one in the repository."""
    layout = (ROOT / "docs" / "architecture.md").read_text()
    modules = [path for package in ("kontext", "neurons", "protocol") for path in (ROOT / package).rglob("*.py")
               if path.name != "__init__.py"]
    missing = sorted(str(path.relative_to(ROOT)) for path in modules if not re.search(rf"\b{path.name}\b", layout))
    assert not missing, f"docs/architecture.md does not name {missing}"
