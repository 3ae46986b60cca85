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
