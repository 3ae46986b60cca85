"""Command-line flags as a table over the settings: each flag sets one Settings field, whose default it shows."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from pydantic_settings import BaseSettings


@dataclass(frozen=True)
class Flag:
    """``--flag`` sets the setting ``field`` (environment key ``FIELD``); unset, the environment and ``.env``
    decide, then the field's default. ``switch``: a boolean flag with its ``--no-`` form; ``const``: a flag that
    sets that value (``--logging.debug`` sets LOG_LEVEL=DEBUG)."""

    flag: str
    field: str
    help: str
    type: Any = str
    switch: bool = False
    const: Any = None


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag], settings: type[BaseSettings]) -> None:
    """Add ``flags`` to ``parser``; each help line names its setting and that setting's default."""
    for flag in flags:
        info = settings.model_fields[flag.field]
        default = info.default
        shown = f"{flag.field.upper()}" + ("" if default in (None, "") else f", default {_plain(default)}")
        help_text = f"{flag.help} ({shown})"
        if flag.switch:
            parser.add_argument(flag.flag, dest=flag.field, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif flag.const is not None:
            parser.add_argument(flag.flag, dest=flag.field, action="store_const", const=flag.const, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag.flag, dest=flag.field, type=flag.type, default=None, help=help_text)


def given(args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """The settings the command line set (flags not given are left out, so the environment decides)."""
    return {flag.field: value for flag in flags if (value := getattr(args, flag.field, None)) is not None}


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def env_file_flag(parser: argparse.ArgumentParser, default: Optional[str] = ".env") -> None:
    parser.add_argument("--env-file", dest="env_file", default=default,
                        help=f"dotenv file with the settings (default: {default}); the environment wins over it")
