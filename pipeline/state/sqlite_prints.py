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
from collections.abc import Callable, Collection, Container, Iterable, Set
from pathlib import Path

from pipeline.state.sqlite_schema import connect

__all__ = ["Settled", "missing_outputs", "settled_rows", "write_prints"]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS row_prints (fp BLOB NOT NULL, key TEXT NOT NULL, units INTEGER NOT NULL,"
    " PRIMARY KEY (fp, key)) WITHOUT ROWID"
)
_BY_KEY = "CREATE INDEX IF NOT EXISTS row_prints_key ON row_prints (key)"
# Everything below walks two tables in one order (fingerprint, or unit key), never looking rows up
# at random: that is 30 s instead of 2 for a million units on a cold cache.
_WANT = "CREATE TEMP TABLE want (fp BLOB PRIMARY KEY) WITHOUT ROWID"
_INCOMPLETE = (  # unknown rows, or rows whose index entries are not all there
    "SELECT w.fp FROM want w LEFT JOIN row_prints p ON p.fp = w.fp"
    " GROUP BY w.fp HAVING count(p.key) = 0 OR count(p.key) != max(p.units) OR min(p.units) != max(p.units)"
)
_UNFINISHED = (  # rows with a unit that is not done (few: one scan of units, a lookup each)
    "SELECT DISTINCT p.fp FROM units u JOIN row_prints p ON p.key = u.key WHERE u.phase != 'done'"
)
_INDEXED = "SELECT count(*) FROM want w JOIN row_prints p ON p.fp = w.fp"
_FILES = (
    "SELECT p.fp, p.key, o.n, o.path, o.bytes FROM row_prints p"
    " LEFT JOIN outputs o ON o.unit_key = p.key ORDER BY p.key"
)


class Settled:
    """The settled rows among the fingerprints asked about, and their number of units in all."""

    def __init__(self, asked: Set[bytes] = frozenset(), unsettled: Set[bytes] = frozenset(), units: int = 0):
        self._asked, self._unsettled, self.units = asked, unsettled, units

    def __contains__(self, fp: object) -> bool:
        return fp in self._asked and fp not in self._unsettled


def write_prints(conn: sqlite3.Connection, prints: Iterable[tuple[bytes, tuple[str, ...]]]) -> None:
    """Index each row's units under its fingerprint. Write only units already in ``units`` (units
    are never deleted): an indexed key is then a recorded unit. An entry never goes stale: the same
    fingerprint always makes the same units."""
    conn.execute(_TABLE)
    conn.execute(_BY_KEY)
    conn.executemany(
        "INSERT OR IGNORE INTO row_prints (fp, key, units) VALUES (?, ?, ?)",
        ((fp, key, len(keys)) for fp, keys in prints for key in keys),
    )


def settled_rows(path: Path, prints: Collection[bytes]) -> Settled:
    """Of ``prints``, the rows whose every unit is done. Files are not looked at here
    (:func:`missing_outputs` does, later). One snapshot; a file without the index settles none."""
    try:
        conn = connect(path, readonly=True)
    except sqlite3.Error:
        return Settled()
    try:
        conn.execute("BEGIN")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'row_prints'").fetchone() is None:
            return Settled()
        conn.execute(_WANT)
        asked = frozenset(prints)
        conn.executemany("INSERT INTO want (fp) VALUES (?)", ((fp,) for fp in asked))
        unsettled = {fp for (fp,) in conn.execute(_INCOMPLETE)}
        unsettled.update(fp for (fp,) in conn.execute(_UNFINISHED))
        conn.executemany("DELETE FROM want WHERE fp = ?", ((fp,) for fp in unsettled))
        return Settled(asked, unsettled, conn.execute(_INDEXED).fetchone()[0])
    except sqlite3.Error:
        return Settled()
    finally:
        conn.close()


def missing_outputs(
    path: Path, prints: Container[bytes], present: Callable[[str, int | None], bool]
) -> dict[str, list[int]]:
    """The outputs of the units of rows ``prints`` that are not on disk at their recorded size:
    unit key -> output numbers (what ``reopen`` takes; none recorded at all: an empty list)."""
    missing: dict[str, list[int]] = {}
    conn = connect(path, readonly=True)
    try:
        conn.execute("BEGIN")
        for fp, key, n, out_path, size in conn.execute(_FILES):
            if fp in prints and (out_path is None or not present(out_path, size)):
                numbers = missing.setdefault(key, [])
                if n is not None:
                    numbers.append(n)
    finally:
        conn.close()
    return missing
