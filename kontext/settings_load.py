"""Building the settings at start: deprecated names, flags over the environment, one-line refusals."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, TypeVar

from dotenv import dotenv_values
from pydantic import ValidationError

from kontext.errors import StartupError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

log = logging.getLogger("kontext.settings")

S = TypeVar("S", bound="BaseSettings")

DEPRECATED: dict[str, str] = {
    "KONTEXT_DEVICE": "KONTEXT_DEVICES",
    "CALLBACK_ALLOW_PRIVATE": "OUTBOUND_ALLOW_PRIVATE",
}
"""Old setting name -> its new name. Read for one release with a one-line warning, then dropped."""
PLACEHOLDER = re.compile(r"your[-_]|<[^>]*>|\bexample\.(?:org|com|net)\b|\bchangeme\b", re.IGNORECASE)
"""What a value copied from an example and never edited looks like: it must not become live."""


def file_values(env_file: Optional[str | Path]) -> dict[str, str]:
    """The dotenv file's non-empty values (none when there is no such file)."""
    if not env_file or not Path(env_file).is_file():
        return {}
    return {key: value for key, value in dotenv_values(env_file).items() if value}


def environment(env_file: Optional[str | Path]) -> dict[str, str]:
    """The dotenv file's values under the process environment's (which win), as the settings read them."""
    return {**file_values(env_file), **{k: v for k, v in os.environ.items() if v}}


def load_settings(cls: type[S], env_file: Optional[str | Path], flags: Mapping[str, Any]) -> S:
    given = {name: value for name, value in flags.items() if value is not None}
    given.update(_deprecated(environment(env_file), given))
    try:
        settings = cls(_env_file=env_file, **given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, error['loc'])).upper() or 'settings'}: {error['msg']}"
                             for error in exc.errors())
        raise StartupError(f"invalid settings: {problems}") from None
    refuse_placeholders(settings)
    return settings


def _deprecated(env: Mapping[str, str], given: Mapping[str, Any]) -> dict[str, str]:
    """Values of deprecated names, under their new field names, where the new name is not set."""
    taken: dict[str, str] = {}
    for old, new in DEPRECATED.items():
        if old not in env:
            continue
        if new in env or new.lower() in given:
            log.warning("setting %s is deprecated and ignored here: %s is set (remove %s)", old, new, old)
            continue
        log.warning("setting %s is deprecated: rename it %s (the old name is read for this release only)", old, new)
        taken[new.lower()] = env[old]
    return taken


def refuse_placeholders(settings: BaseSettings) -> None:
    """A setting still holding an example's placeholder (``your-...``, ``example.org``) stops the start."""
    for name, value in settings.model_dump().items():
        if isinstance(value, (str, Path)) and PLACEHOLDER.search(str(value)):
            raise StartupError(f"setting {name.upper()} still holds a placeholder ({value}); set it to a real "
                               f"value or remove it from .env")
