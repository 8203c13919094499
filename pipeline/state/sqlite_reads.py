"""Reading a state file: the reads the store and the read-only view share, and ``open_readonly``.

Reads go through their own read-only connection, which sees committed transactions only: the
store's mutators return once committed, so a run reads its own writes, and ``status`` can read
while a run writes (WAL) without taking its lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence, Set
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

from pipeline.errors import StateError
from pipeline.state.records import PHASES, EventRecord, OutputRecord, Phase, UnitRecord
from pipeline.state.review import ReviewReads
from pipeline.state.sqlite_schema import check_version, connect, mapped, refuse_symlinks

__all__ = ["Reads", "StateView", "open_readonly"]

_CHUNK = 10_000  # rows fetched at a time by the streaming reads
_UNIT_COLS = (
    "key, item_id, step, idx, upstream, request_json, expected_outputs, phase, job_id, attempts,"
    " submitted_at, finished_at, last_error, error_kind, updated_at, run_id"
)
_OUTPUT_COLS = "unit_key, n, asset_id, url, path, bytes, sha256, downloaded_at"
_UNIT_FIELDS = [c.strip() for c in _UNIT_COLS.split(",")]
_JOINED = ", ".join(["u." + c for c in _UNIT_FIELDS] + ["o." + c.strip() for c in _OUTPUT_COLS.split(",")])
_GET_SQL = f"SELECT {_JOINED} FROM units u LEFT JOIN outputs o ON o.unit_key = u.key WHERE u.key = ?"  # noqa: S608
_GET_SQL += " ORDER BY o.n"

T = TypeVar("T")


class Reads(ReviewReads):
    """The pure, synchronous reads shared by the store and the read-only view."""

    _path: Path
    _reader: sqlite3.Connection

    @contextmanager
    def _snapshot(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One read transaction, so a unit and its outputs come from the same commit."""
        with mapped(self._path, doing):
            self._reader.execute("BEGIN")
            try:
                yield self._reader
            finally:
                self._reader.execute("COMMIT")

    def _records(self, conn: sqlite3.Connection, where: str, params: Sequence[object]) -> list[UnitRecord]:
        rows = conn.execute(
            f"SELECT {_UNIT_COLS} FROM units {where} ORDER BY item_id, step, idx",  # noqa: S608 - fixed text
            params,
        ).fetchall()
        outs: dict[str, list[OutputRecord]] = {}
        if rows:
            out_sql = (
                f"SELECT {_OUTPUT_COLS} FROM outputs WHERE unit_key IN (SELECT key FROM units {where})"  # noqa: S608
                " ORDER BY unit_key, n"
            )
            for out in conn.execute(out_sql, params):
                outs.setdefault(out[0], []).append(OutputRecord(*out))
        make: Any = UnitRecord  # the row's columns are the record's fields, in order
        return [make(*r[:7], PHASES[r[7]], *r[8:], outputs=tuple(outs.get(r[0], ()))) for r in rows]

    def get(self, key: str) -> UnitRecord | None:
        """The unit with this key, with its outputs, or ``None``.

        One statement (a row per output), so one commit's view without a transaction around two:
        the run reads a unit or two per output it delivers."""
        with mapped(self._path, "reading a unit"):
            rows = self._reader.execute(_GET_SQL, (key,)).fetchall()
        if not rows:
            return None
        first, width = rows[0], len(_UNIT_FIELDS)
        outputs = tuple(OutputRecord(*row[width:]) for row in rows if row[width + 1] is not None)
        make: Any = UnitRecord  # the row's columns are the record's fields, in order
        found: UnitRecord = make(*first[:7], PHASES[first[7]], *first[8:width], outputs=outputs)
        return found

    def phases(self) -> dict[str, Phase]:
        """Every unit's phase by key: what the scheduler needs to plan a resume."""
        with mapped(self._path, "reading phases"):
            return {key: PHASES[phase] for key, phase in self._reader.execute("SELECT key, phase FROM units")}

    def iter_phases(self) -> Iterator[tuple[str, Phase]]:
        """Every unit's key and phase, in chunks from one snapshot: a resume of a million-unit state
        without a million-entry dict. Consume it to the end (the snapshot is held until then)."""
        sql = "SELECT key, phase FROM units"
        yield from self._stream("reading phases", sql, lambda row: (row[0], PHASES[row[1]]))

    def iter_outputs(self) -> Iterator[tuple[str, int, str | None, int | None]]:
        """``(unit_key, n, path, bytes)`` of every recorded output, streamed like :meth:`iter_phases`:
        what a resume checks on disk. One scan of the outputs table (the caller knows which units
        are done: a join would cost two index lookups per output)."""
        yield from self._stream("reading outputs", "SELECT unit_key, n, path, bytes FROM outputs", tuple)

    def _stream(self, doing: str, sql: str, make: Callable[[Any], T]) -> Iterator[T]:
        with self._snapshot(doing) as conn:
            cursor = conn.execute(sql)
            while rows := cursor.fetchmany(_CHUNK):
                for row in rows:
                    yield make(row)

    def counts(self) -> dict[Phase, int]:
        """How many units are in each phase (every phase present, zeros included)."""
        counts = dict.fromkeys(Phase, 0)
        with mapped(self._path, "counting units"):
            for phase, count in self._reader.execute("SELECT phase, count(*) FROM units GROUP BY phase"):
                counts[PHASES[phase]] = count
        return counts

    def job_ids(self) -> set[str]:
        """Every job id the file records: jobs that are ours (reconciliation must not adopt them)."""
        with mapped(self._path, "reading job ids"):
            return {j for (j,) in self._reader.execute("SELECT job_id FROM units WHERE job_id IS NOT NULL")}

    def done_outputs(self) -> dict[str, list[tuple[int, str | None, int | None]]]:
        """``(n, path, bytes)`` of every output of every done unit: all a no-op resume needs to check."""
        found: dict[str, list[tuple[int, str | None, int | None]]] = {}
        sql = (
            "SELECT o.unit_key, o.n, o.path, o.bytes FROM outputs o JOIN units u ON u.key = o.unit_key"
            " WHERE u.phase = 'done'"
        )
        with mapped(self._path, "reading outputs"):
            for key, n, path, size in self._reader.execute(sql):
                found.setdefault(key, []).append((n, path, size))
        return found

    def resource(self, kind: str, key: str) -> dict[str, Any] | None:
        """What was recorded for a shared resource (an uploaded file by hash, a trained model)."""
        with mapped(self._path, "reading a resource"):
            row = self._reader.execute(
                "SELECT value_json FROM resources WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def units(self, phase: Phase | None = None) -> list[UnitRecord]:
        """All units (or those in ``phase``) ordered by item, step and index."""
        with self._snapshot("listing units") as conn:
            if phase is None:
                return self._records(conn, "", ())
            return self._records(conn, "WHERE phase = ?", (Phase(phase).value,))

    def stale_keys(self, current_keys: Set[str]) -> list[UnitRecord]:
        """Units in the file that the manifest no longer has: reported, never deleted (they may be paid)."""
        with self._snapshot("finding stale units") as conn:
            stale = [k for (k,) in conn.execute("SELECT key FROM units") if k not in current_keys]
            if not stale:
                return []
            return self._records(conn, "WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(stale),))

    def history(self, key: str) -> list[EventRecord]:
        """A unit's phase changes, oldest first."""
        with mapped(self._path, "reading history"):
            rows = self._reader.execute(
                "SELECT unit_key, at, phase, detail FROM events WHERE unit_key = ? ORDER BY id", (key,)
            )
            return [EventRecord(k, at, PHASES[p], d) for k, at, p, d in rows]


class StateView(Reads):
    """A read-only view for ``status`` while a run goes on: opens nothing for writing, takes no run lock."""

    def __init__(self, path: Path, reader: sqlite3.Connection) -> None:
        self._path = path
        self._reader = reader

    def close(self) -> None:
        """Close the connection."""
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_readonly(path: str | os.PathLike[str]) -> StateView:
    """Open a state file for reading only (``mode=ro``); never creates, migrates or locks it.

    With no ``-wal`` file no writer is running, so the file is read as immutable and SQLite creates
    no ``-wal``/``-shm`` beside it; with a writer running it reads through the WAL like any reader.
    """
    p = Path(path)
    refuse_symlinks(p)
    if not p.is_file():
        raise StateError(f"no state file at {p}: nothing has run with this state path yet")
    with mapped(p, "opening read-only"):
        conn = connect(p, readonly=True, immutable=not Path(f"{p}-wal").exists())
        try:
            check_version(conn, p, exact=True)
        except BaseException:
            conn.close()
            raise
    return StateView(p, conn)
