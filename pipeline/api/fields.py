"""Readers of single fields of the API's JSON, shared by every record in :mod:`.records`.

Absent, ``null`` and ``""`` all read as ``None`` for an optional field; a required field that is
missing, or any field of the wrong JSON type, raises :class:`WireFormatError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "WireFormatError",
    "need",
    "objects",
    "opt_number",
    "opt_str",
    "opt_time",
    "parse_timestamp",
    "req_int",
    "req_str",
    "status_text",
]


class WireFormatError(ValueError):
    """A response field is missing or has the wrong type (internal; the client maps it)."""


def need(data: Mapping[str, Any], key: str) -> Any:
    """A required field, any type."""
    value = data.get(key)
    if value is None:
        raise WireFormatError(f"missing required field {key!r}")
    return value


def req_str(data: Mapping[str, Any], key: str) -> str:
    """A required non-empty string."""
    value = need(data, key)
    if not isinstance(value, str) or not value:
        raise WireFormatError(f"field {key!r} must be a non-empty string, got {type(value).__name__}")
    return value


def opt_str(data: Mapping[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` present; several keys cover the API's ``modelID``/``modelId`` spellings."""
    for key in keys:
        value = data.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise WireFormatError(f"field {key!r} must be a string, got {type(value).__name__}")
        return value
    return None


def opt_number(data: Mapping[str, Any], key: str) -> float | None:
    """An optional number (a JSON boolean is not one)."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireFormatError(f"field {key!r} must be a number, got {type(value).__name__}")
    return float(value)


def req_int(data: Mapping[str, Any], key: str) -> int:
    """A required integer (a JSON boolean is not one)."""
    value = need(data, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireFormatError(f"field {key!r} must be an integer, got {type(value).__name__}")
    return value


def opt_time(data: Mapping[str, Any], key: str) -> datetime | None:
    """An optional RFC 3339 timestamp, as an aware UTC datetime."""
    value = opt_str(data, key)
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise WireFormatError(f"field {key!r} is not an RFC 3339 timestamp") from exc


def objects(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """A list of objects; absent or ``null`` is empty (a Go backend sends ``null``)."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise WireFormatError(f"field {key!r} must be a list of objects")
    return value


def status_text(data: Mapping[str, Any]) -> str:
    """The required ``status`` string, as sent."""
    value = need(data, "status")
    if not isinstance(value, str):
        raise WireFormatError(f"field 'status' must be a string, got {type(value).__name__}")
    return value


def parse_timestamp(text: str) -> datetime:
    """RFC 3339 (``Z`` or an offset, any number of fraction digits) to an aware UTC datetime.

    A timestamp without an offset is taken as UTC. Raises ``ValueError`` on garbage.
    """
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
