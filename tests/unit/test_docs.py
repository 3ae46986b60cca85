"""What the README and .env.example promise about settings holds: every key documented, the example loads."""

from __future__ import annotations

import re
from pathlib import Path

from kontext.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _keys() -> list[str]:
    return [name.upper() for name in Settings.model_fields]


def test_env_example_documents_every_setting_and_loads_as_it_is() -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, re.MULTILINE))
    assert set(_keys()) <= documented, sorted(set(_keys()) - documented)
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings.capacity_job_types == ("img-h100_pcie",) and settings.admission_deadline_seconds is None


def test_readme_configuration_table_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration"):]
    section = section[: section.index("\n## ", 1)]
    missing = [key for key in _keys() if f"`{key}`" not in section]
    assert not missing, missing
