"""A job record as a row of column values, and back: the one mapping both stores (SQLite, Redis) use.

The columns are the ``JobRecord`` dataclass's fields, by name and type: a field added there is a column of
both stores (SQLite also needs a migration). What each write owns is derived the same way: the outcome's
columns from ``JobOutcome``, the callback's from ``CallbackRecord`` (each field, prefixed ``callback_``).
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from enum import Enum
from typing import Any, Mapping

from kontext.jobs.record import JobOutcome, JobRecord
from protocol import CallbackRecord, EditRequest, JobStatus

COLUMNS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(JobRecord))
_FIELDS = {field.name: field for field in dataclasses.fields(JobRecord)}
_HINTS = typing.get_type_hints(JobRecord)


def _value_type(name: str) -> tuple[Any, bool]:
    """(the column's value type, whether it may be NULL): ``Optional[X]`` is (X, True)."""
    hint = _HINTS[name]
    if typing.get_origin(hint) is typing.Union:
        types = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return types[0], len(types) < len(typing.get_args(hint))
    return hint, False


_TYPES = {name: _value_type(name) for name in COLUMNS}


def column_value(value: Any) -> Any:
    """A field's value as stored: enums by value, times as epoch seconds."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.timestamp()
    return value


def to_row(job: JobRecord) -> dict[str, Any]:
    """Every column of ``job``. The request is stored without its ``image_b64`` (the image store keeps the
    bytes), and not at all once the job is swept (its tombstone)."""
    row = {name: column_value(getattr(job, name)) for name in COLUMNS}
    row["request"] = None if job.swept_at else job.request.model_dump_json(exclude={"image_b64"})
    return row


def from_row(row: Mapping[str, Any]) -> JobRecord:
    """The record from its columns, as SQLite returns them (typed) or Redis does (text); a NULL in a column
    that cannot be NULL (one added later, absent from an old Redis hash) takes the field's default."""
    values: dict[str, Any] = {}
    for name in COLUMNS:
        raw = row[name]
        kind, nullable = _TYPES[name]
        if name == "request":
            values[name] = (EditRequest.model_validate_json(raw) if raw
                            else EditRequest.model_construct(prompt="", seed=0))
        elif raw is None:
            if not nullable and _FIELDS[name].default is not dataclasses.MISSING:
                values[name] = _FIELDS[name].default
            else:
                values[name] = None
        else:
            values[name] = kind(raw)  # an enum from its value, a float or int from its text (Redis)
    return JobRecord(**values)


def outcome_columns(outcome: JobOutcome) -> dict[str, Any]:
    """What ``mark_finished`` writes: each field of the outcome, in the column of its name."""
    return {field.name: column_value(getattr(outcome, field.name)) for field in dataclasses.fields(JobOutcome)}


def callback_columns(record: CallbackRecord) -> dict[str, Any]:
    """What ``set_callback`` writes: each field of the record, in the ``callback_<field>`` column."""
    return {f"callback_{name}": column_value(getattr(record, name)) for name in CallbackRecord.model_fields}


def started_columns(*, started_at: float, attempts: int, worker: str) -> dict[str, Any]:
    """What ``mark_started`` writes."""
    return {"status": JobStatus.PROCESSING.value, "started_at": started_at, "attempts": attempts, "worker": worker}


def _check(names: list[str], what: str) -> None:
    """At import: every column a write derives from another type is a column of the record."""
    unknown = [name for name in names if name not in _TYPES]
    if unknown:
        raise TypeError(f"{what} has fields that are no column of JobRecord: {unknown}")


_check([field.name for field in dataclasses.fields(JobOutcome)], "JobOutcome")
_check([f"callback_{name}" for name in CallbackRecord.model_fields], "CallbackRecord")
