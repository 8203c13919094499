"""How the API commands print: records on stdout, notes on stderr, so stdout stays parseable.

An aligned plain-text table (lists) or ``field  value`` lines (one record); ``--json`` prints the
same records as JSON with the records' own **snake_case** field names (``job_id``, ``created_at``
as RFC 3339 UTC, ``Z``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["emit", "note"]


def _plain(value: Any) -> Any:
    """Records (dataclasses) as dicts, recursively; tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Left-aligned columns under a header; ``(none)`` for no rows."""
    if not rows:
        return "(none)"
    grid = [[title for title, _ in columns]] + [[_cell(r.get(key)) for _, key in columns] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in grid
    )


def _pairs(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    """``field, value`` lines of one record; lists of objects (job outputs) get one line per field."""
    for key, value in data.items():
        if isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                yield from _pairs(item, f"{prefix}{key}[{i}].")
        else:
            yield prefix + key, _cell(value)


def emit(args: argparse.Namespace, value: Any, columns: Sequence[tuple[str, str]] | None = None) -> None:
    """Print ``value`` as JSON, a table (``columns``) or one record's fields."""
    data = _plain(value)
    if args.json:
        print(json.dumps(data, indent=2, default=_json_default))
    elif columns is not None:
        print(_table(data, columns))
    else:
        pairs = list(_pairs(data))
        width = max((len(k) for k, _ in pairs), default=0)
        print("\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs))


def note(text: str) -> None:
    """A progress note for the person at the terminal (stderr)."""
    print(text, file=sys.stderr, flush=True)
