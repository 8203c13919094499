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
from collections.abc import Callable, Container, Iterable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

from pipeline.state.sqlite_schema import connect

__all__ = ["Index", "Settled", "missing_outputs", "read_index", "settled_rows", "write_prints"]

_TABLES = (
    "CREATE TABLE IF NOT EXISTS row_prints (fp BLOB PRIMARY KEY, units INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS row_print_keys (key TEXT NOT NULL, fp BLOB NOT NULL,"
    " PRIMARY KEY (key, fp)) WITHOUT ROWID",
)
# Every read below is one sequential walk (units, the index, or outputs beside the index's keys):
# a lookup per row in another table's order reads pages at random, 20 s for a million on a busy
# machine. Rows with an unfinished unit are few: found from the units scan, a key lookup each.
_UNFINISHED = (
    "SELECT DISTINCT k.fp FROM units u CROSS JOIN row_print_keys k ON k.key = u.key WHERE u.phase != 'done'"
)
_FILES = (
    "SELECT k.fp, k.key, o.n, o.path, o.bytes FROM row_print_keys k LEFT JOIN outputs o ON o.unit_key = k.key"
)


class Settled:
    """The settled rows among the fingerprints asked about, and their number of units in all."""

    def __init__(self, rows: Set[bytes] = frozenset(), units: int = 0) -> None:
        self.rows, self.units = rows, units


def write_prints(conn: sqlite3.Connection, prints: Sequence[tuple[bytes, tuple[str, ...]]]) -> None:
    """Index each row's units under its fingerprint. Write only rows whose units are all in
    ``units`` (units are never deleted): an indexed key is then a recorded unit. An entry never goes
    stale, as one fingerprint always makes the same units; a unit two rows make (they differ in a
    column no unit reads) is indexed under both."""
    for table in _TABLES:
        conn.execute(table)
    conn.executemany(
        "INSERT OR IGNORE INTO row_prints (fp, units) VALUES (?, ?)", ((fp, len(k)) for fp, k in prints)
    )
    conn.executemany(
        "INSERT OR IGNORE INTO row_print_keys (key, fp) VALUES (?, ?)",
        ((key, fp) for fp, keys in prints for key in keys),
    )


@dataclass(frozen=True, slots=True)
class Index:
    """What the state says of its rows: each known fingerprint's number of units, and the
    fingerprints with a unit that is not done."""

    known: dict[bytes, int]
    unsettled: set[bytes]

    def settled(self, prints: Iterable[bytes]) -> Settled:
        """Of ``prints``, the rows whose every unit is done (set operations in C: half a million
        rows in no time)."""
        rows = self.known.keys() & set(prints)
        rows -= self.unsettled
        return Settled(rows, sum(map(self.known.__getitem__, rows)))


def read_index(path: Path) -> Index | None:
    """The row index from one snapshot; ``None`` for a file without it (or unreadable). Files are
    not looked at here (:func:`missing_outputs` does, later)."""
    try:
        conn = connect(path, readonly=True)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'row_print_keys'").fetchone() is None:
            return None
        unsettled = {fp for (fp,) in conn.execute(_UNFINISHED)}
        return Index(dict(conn.execute("SELECT fp, units FROM row_prints")), unsettled)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def settled_rows(path: Path, prints: Iterable[bytes]) -> Settled:
    """Of ``prints``, the rows whose every unit is done (:func:`read_index`, then :meth:`Index.settled`)."""
    index = read_index(path)
    return Settled() if index is None else index.settled(prints)


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
