"""The row-fingerprint index of a state file: which manifest rows made which units.

``row_prints`` maps each row's fingerprint (:mod:`pipeline.manifest.prints`) to the keys of its
units. It is an index, not a record: it says nothing a run could not find by expanding the row
again, so it lives beside the versioned schema (created on first write, never migrated) and a file
without it only makes the next run expand everything. What a row's units are doing is always read
from ``units`` and ``outputs``: a row is settled only while every unit is done with its outputs
recorded, whatever happened to them since the index was written (a reset, a rejection, a reopen);
whether those outputs are still on disk is :func:`missing_outputs`'s to say.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence, Set
from pathlib import Path

from pipeline.state.sqlite_schema import connect

__all__ = ["missing_outputs", "settled_rows", "write_prints"]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS row_prints (key TEXT PRIMARY KEY, fp BLOB NOT NULL,"
    " units INTEGER NOT NULL) WITHOUT ROWID"
)
# Both tables in key order: two sequential walks, where a lookup per unit in the order of rows
# (or a join with ``units``) reads pages at random: 30 s instead of 2 for a million units.
_OUTPUTS = "SELECT p.key, p.fp, p.units, o.path FROM row_prints p LEFT JOIN outputs o ON o.unit_key = p.key"

_FILES = (
    "SELECT p.fp, o.unit_key, o.n, o.path, o.bytes FROM row_prints p JOIN outputs o ON o.unit_key = p.key"
)


def write_prints(conn: sqlite3.Connection, prints: Iterable[tuple[bytes, tuple[str, ...]]]) -> None:
    """Index each row's units under its fingerprint. A unit made by another row since (a column
    that no unit reads was edited) moves to that row's fingerprint; the row it left is incomplete
    from then on, and expanded again if it comes back."""
    conn.execute(_TABLE)
    conn.executemany(
        "INSERT OR REPLACE INTO row_prints (key, fp, units) VALUES (?, ?, ?)",
        ((key, fp, len(keys)) for fp, keys in prints for key in keys),
    )


def settled_rows(path: Path, prints: Sequence[bytes]) -> dict[bytes, int]:
    """Of ``prints``, the rows whose units are all done with at least one output recorded each, with
    their number of units. Files are not looked at (:func:`missing_outputs` does, later). Read from
    one snapshot; a file without the index (or unreadable) settles none."""
    try:
        conn = connect(path, readonly=True)
    except sqlite3.Error:
        return {}
    try:
        conn.execute("BEGIN")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'row_prints'").fetchone() is None:
            return {}
        unfinished = {key for (key,) in conn.execute("SELECT key FROM units WHERE phase != 'done'")}
        return _settled(conn.execute(_OUTPUTS), set(prints), unfinished)
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def missing_outputs(
    path: Path, prints: Set[bytes], present: Callable[[str, int | None], bool]
) -> dict[str, list[int]]:
    """The outputs of the units of rows ``prints`` that are not on disk at their recorded size:
    unit key -> output numbers (what ``reopen`` takes)."""
    missing: dict[str, list[int]] = {}
    conn = connect(path, readonly=True)
    try:
        conn.execute("BEGIN")
        for fp, key, n, out_path, size in conn.execute(_FILES):
            if fp in prints and (out_path is None or not present(out_path, size)):
                missing.setdefault(key, []).append(n)
    finally:
        conn.close()
    return missing


def _settled(
    rows: Iterable[tuple[str, bytes, int, str | None]], wanted: Set[bytes], unfinished: Set[str]
) -> dict[bytes, int]:
    """Rows of the index walk (one per output; a unit without outputs has one with no path)."""
    seen: dict[bytes, int] = {}  # fingerprint -> its units met so far
    needed: dict[bytes, int] = {}
    failed: set[bytes] = set()
    last = ""
    for key, fp, units, out_path in rows:
        if fp not in wanted or fp in failed:
            continue
        if key != last:
            last = key
            seen[fp] = seen.get(fp, 0) + 1
            needed[fp] = units
            if key in unfinished:
                failed.add(fp)
        if out_path is None:
            failed.add(fp)
    return {fp: n for fp, n in seen.items() if fp not in failed and n == needed[fp]}
