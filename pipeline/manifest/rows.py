"""Rows files: the table (CSV, TSV, JSON, JSON Lines or YAML) whose rows fill ``{column}`` placeholders.

Every row keeps the line it starts on (a CSV header is line 1, so the first data
row is line 2) so that a problem points into the file the user edits. CSV values
stay strings; JSON and YAML values keep their scalar types.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ManifestError, ManifestProblem
from pipeline.manifest.yamlsource import (
    Document,
    Node,
    decode_text,
    parse_yaml,
    read_bytes,
    unpaired_surrogate,
)

__all__ = ["ROWS_SUFFIXES", "Cell", "Rows", "load_rows", "rows_from_node"]

Cell = str | int | float | bool | None

#: File types ``rows:`` can name, by suffix.
ROWS_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml")

_MAX_PROBLEMS = 100


@dataclass(frozen=True, slots=True)
class Rows:
    """The rows of one table, in file order.

    ``columns`` lists every column in order of first appearance; ``complete`` says
    every row has every column (always true for CSV). ``cells`` is the exact
    ``file:line:column`` of each value, kept only for YAML rows; other formats
    point at the row's line.
    """

    label: str
    columns: tuple[str, ...]
    records: tuple[Mapping[str, Cell], ...]
    lines: tuple[int, ...]
    complete: bool
    cells: tuple[Mapping[str, str], ...] | None = None

    def where(self, index: int, column: str | None = None) -> str:
        """Where row ``index`` (0-based), or one of its values, is in the rows file."""
        if self.cells is not None:
            cells = self.cells[index]
            return cells.get(column or "", cells[""])
        return f"{self.label}:{self.lines[index]}"


def load_rows(path: Path, *, label: str, max_bytes: int) -> Rows:
    """Read a rows file chosen by its suffix; all of its problems are raised at once."""
    suffix = path.suffix.lower()
    if suffix not in ROWS_SUFFIXES:
        raise ManifestError(
            [
                ManifestProblem(
                    label,
                    "",
                    f"unknown rows file type {suffix or '(none)'!r}; use one of {', '.join(ROWS_SUFFIXES)}",
                )
            ]
        )
    text = decode_text(
        read_bytes(path, max_bytes=max_bytes, label=label, what="rows file"), label=label, what="rows file"
    )
    if suffix in (".yaml", ".yml"):
        doc = parse_yaml(text, label=label)
        if doc.root is None:
            raise ManifestError([ManifestProblem(f"{label}:1:1", "", "the rows file is empty")])
        return rows_from_node(doc.root, doc)
    problems: list[ManifestProblem] = []
    if suffix == ".json":
        records, lines = _read_json(text, label, problems)
    elif suffix == ".jsonl":
        records, lines = _read_jsonl(text, label, problems)
    else:
        delimiter = "\t" if suffix == ".tsv" else _delimiter(text)
        plain = _plain_csv(text, delimiter)
        if plain is not None:
            return Rows(label, plain[0], plain[1], plain[2], True)
        records, lines = _read_csv(text, label, delimiter, problems)
    if not records and not problems:
        problems.append(ManifestProblem(f"{label}:1", "", "the rows file has no data rows"))
    if problems:
        raise ManifestError(problems[:_MAX_PROBLEMS])
    return _table(label, records, lines)


def rows_from_node(node: Node, doc: Document) -> Rows:
    """Rows given as a YAML list of mappings (inline ``rows:`` or a ``.yaml`` rows file)."""
    problems: list[ManifestProblem] = []
    records: list[dict[str, Cell]] = []
    lines: list[int] = []
    cells: list[dict[str, str]] = []
    if not isinstance(node.value, list):
        raise ManifestError([ManifestProblem(doc.where(node), "rows", "rows must be a list of mappings")])
    for i, row in enumerate(node.value):
        if not isinstance(row.value, dict):
            problems.append(ManifestProblem(doc.where(row), f"rows[{i}]", "each row must be a mapping"))
            continue
        record: dict[str, Cell] = {}
        where = {"": doc.where(row)}
        for column, cell in row.value.items():
            if isinstance(cell.value, dict | list):
                problems.append(
                    ManifestProblem(
                        doc.where(cell), f"rows[{i}].{column}", "a row value must be text or a number"
                    )
                )
                continue
            record[column.strip()] = cell.value
            where[column.strip()] = doc.where(cell)
        records.append(record)
        lines.append(row.line)
        cells.append(where)
    if not node.value:
        problems.append(ManifestProblem(doc.where(node), "rows", "rows is empty"))
    if problems:
        raise ManifestError(problems[:_MAX_PROBLEMS])
    table = _table(doc.label, records, lines)
    return Rows(table.label, table.columns, table.records, table.lines, table.complete, tuple(cells))


def _table(label: str, records: list[dict[str, Cell]], lines: list[int]) -> Rows:
    columns: dict[str, None] = {}
    for record in records:
        for column in record:
            columns.setdefault(column)
    complete = all(len(record) == len(columns) for record in records)
    return Rows(label, tuple(columns), tuple(records), tuple(lines), complete)


def _delimiter(text: str) -> str:
    """``;`` when the header line has semicolons and no comma (a European spreadsheet), else ``,``."""
    first = text.split("\n", 1)[0]
    return ";" if ";" in first and "," not in first else ","


def _plain_csv(
    text: str, delimiter: str, *, chunk: int = 1 << 20
) -> tuple[tuple[str, ...], tuple[dict[str, str], ...], tuple[int, ...]] | None:
    """Columns, records and lines of the common CSV, split without the csv module's per-row loop
    (a third of a million-row load): no quote or NUL, one kind of line end, no blank line, a header
    of distinct names, every row as wide. ``None``: read the general way, which words every problem.
    Split ``chunk`` characters at a time, so no list of every line is held beside the records."""
    if '"' in text or "\0" in text:
        return None
    end = "\n"
    if "\r" in text:  # Excel's and Python's csv.writer's line ends, and only those
        end = "\r\n"
        if text.count("\r") != text.count("\n") or text.count(end) != text.count("\n"):
            return None
    body = len(text) - len(end) if text.endswith(end) else len(text)  # where the last row ends
    first = text.find(end)
    if not 0 <= first < body:  # no data row
        return None
    names = [field.strip() for field in text[:first].split(delimiter)]
    if "" in names or len(set(names)) != len(names):
        return None
    limit, records = csv.field_size_limit(), []
    start = first + len(end)
    while start <= body:
        cut = text.find(end, min(start + chunk, body))
        cut = body if not start <= cut <= body else cut
        lines = text[start:cut].split(end)
        if "" in lines or max(map(len, lines)) > limit:
            return None
        try:
            records += [dict(zip(names, line.split(delimiter), strict=True)) for line in lines]
        except ValueError:  # a row of another width
            return None
        start = cut + len(end)
    return tuple(names), tuple(records), tuple(range(2, len(records) + 2))


def _read_csv(
    text: str, label: str, delimiter: str, problems: list[ManifestProblem]
) -> tuple[list[dict[str, Cell]], list[int]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records: list[dict[str, Cell]] = []
    lines: list[int] = []
    header: list[str] | None = None
    keep: list[int] = []
    unnamed: list[int] = []
    every = False
    start = 1
    try:
        for fields in reader:
            if not fields:  # a blank line
                start = reader.line_num + 1
                continue
            if header is None:
                header, keep = _header(fields, label, start, problems)
                unnamed = [i for i, name in enumerate(header) if not name]
                every = len(keep) == len(header)  # no nameless or repeated column: a plain zip
            elif len(fields) != len(header):
                problems.append(
                    ManifestProblem(
                        f"{label}:{start}",
                        "",
                        f"this row has {len(fields)} fields but the header has {len(header)}",
                    )
                )
            else:
                records.append(
                    dict(zip(header, fields, strict=True)) if every else {header[i]: fields[i] for i in keep}
                )
                lines.append(start)
                for i in unnamed:
                    if fields[i].strip():
                        problems.append(
                            ManifestProblem(
                                f"{label}:{start}",
                                "",
                                f"field {i + 1} has a value but its column has no name",
                            )
                        )
            if len(problems) >= _MAX_PROBLEMS:
                break
            start = reader.line_num + 1
    except csv.Error as exc:  # reported at the start of the row that could not be read
        problems.append(ManifestProblem(f"{label}:{start}", "", f"CSV error in the row starting here: {exc}"))
    if header is None and not problems:
        problems.append(ManifestProblem(f"{label}:1", "", "the rows file is empty: expected a header line"))
    return records, lines


def _header(
    fields: list[str], label: str, line: int, problems: list[ManifestProblem]
) -> tuple[list[str], list[int]]:
    names = [field.strip() for field in fields]
    keep: list[int] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            continue  # nameless columns are allowed only while empty (Excel's trailing separators)
        if name in seen:
            problems.append(
                ManifestProblem(
                    f"{label}:{line}",
                    "",
                    f"column {name!r} appears twice in the header (fields {seen[name] + 1} and {i + 1})",
                )
            )
            continue
        seen[name] = i
        keep.append(i)
    return names, keep


class _BadJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadJson(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated key are refused: ``json`` would silently keep the last."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _BadJson(f"duplicate key {key!r}")
        result[key] = value
    return result


def _read_json(
    text: str, label: str, problems: list[ManifestProblem]
) -> tuple[list[dict[str, Cell]], list[int]]:
    """Decode a top-level JSON array element by element, to know the line each row starts on."""
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]
    decoder = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    records: list[dict[str, Cell]] = []
    lines: list[int] = []

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    pos = _skip_ws(text, 0)
    if not text.startswith("[", pos):
        problems.append(
            ManifestProblem(f"{label}:{line_of(pos)}", "", "a JSON rows file must be a list of objects")
        )
        return records, lines
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        return records, lines
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            problems.append(
                ManifestProblem(f"{label}:{exc.lineno}:{exc.colno}", "", f"JSON error: {exc.msg}")
            )
            return records, lines
        except ValueError as exc:
            problems.append(ManifestProblem(f"{label}:{line_of(pos)}", "", f"JSON error: {exc}"))
            return records, lines
        _add_record(value, f"{label}:{line_of(pos)}", line_of(pos), records, lines, problems)
        pos = _skip_ws(text, end)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith("]", pos):
            break
        else:
            problems.append(ManifestProblem(f"{label}:{line_of(pos)}", "", "JSON error: expected ',' or ']'"))
            return records, lines
    if _skip_ws(text, pos + 1) != len(text):
        problems.append(
            ManifestProblem(f"{label}:{line_of(pos + 1)}", "", "JSON error: extra data after the list")
        )
    return records, lines


def _read_jsonl(
    text: str, label: str, problems: list[ManifestProblem]
) -> tuple[list[dict[str, Cell]], list[int]]:
    decoder = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    records: list[dict[str, Cell]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = decoder.decode(line)
        except json.JSONDecodeError as exc:
            problems.append(ManifestProblem(f"{label}:{number}:{exc.colno}", "", f"JSON error: {exc.msg}"))
            continue
        except ValueError as exc:
            problems.append(ManifestProblem(f"{label}:{number}", "", f"JSON error: {exc}"))
            continue
        _add_record(value, f"{label}:{number}", number, records, lines, problems)
        if len(problems) >= _MAX_PROBLEMS:
            break
    return records, lines


def _add_record(
    value: object,
    where: str,
    line: int,
    records: list[dict[str, Cell]],
    lines: list[int],
    problems: list[ManifestProblem],
) -> None:
    if not isinstance(value, dict):
        problems.append(ManifestProblem(where, "", "each row must be a JSON object"))
        return
    record: dict[str, Cell] = {}
    for column, cell in value.items():
        if isinstance(cell, dict | list):
            problems.append(
                ManifestProblem(where, "", f"column {column!r}: a row value must be text or a number")
            )
            continue
        why = unpaired_surrogate(column) or (unpaired_surrogate(cell) if isinstance(cell, str) else None)
        if why:
            problems.append(ManifestProblem(where, "", f"column {column!a}: the value {why}"))
            continue
        record[column.strip()] = cell
    records.append(record)
    lines.append(line)


def _skip_ws(text: str, pos: int) -> int:
    length = len(text)
    while pos < length and text[pos] in " \t\r\n":
        pos += 1
    return pos
