"""The review (schema 2 of the state file): reviewers' verdicts, and the outputs regenerations set aside.

Verdicts are keyed by the asset's sha256 (so a regenerated file starts fresh) and append-only: the
newest per sha256 is the current one, ``undo`` clears it and keeps the history. ``review``, the
export and the gallery read them; ``--regenerate-rejected`` writes ``retired`` and the seeds.
Here, for the SQLite file: the reads (part of every reader, :class:`~pipeline.state.sqlite_reads.Reads`)
and the writes (part of :class:`~pipeline.state.sqlite.SqliteStore`); the records and the
Protocol both stores keep are in review_store.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.state.records import CAN_REGENERATE, Phase, rfc3339
from pipeline.state.review_store import (
    HOLD_S,
    VERDICTS,
    DecisionRecord,
    RetiredRecord,
    checked_decision,
    count_review,
)
from pipeline.state.sqlite_schema import mapped
from pipeline.state.sqlite_writer import FORGET, Writer, expect

__all__ = ["VERDICTS", "DecisionRecord", "RetiredRecord", "ReviewReads", "ReviewWrites"]


class ReviewReads:
    """The review's reads, shared by the store and the read-only view (a mixin)."""

    _path: Path
    _reader: sqlite3.Connection

    def decisions(self) -> dict[str, DecisionRecord]:
        """The current verdict per sha256: the newest by time wins (an import may bring older ones;
        equal times: the later row); an ``undo`` leaves none."""
        sql = (
            "SELECT sha256, verdict, note, path, item_id, at FROM decisions d WHERE id = (SELECT id FROM"
            " decisions WHERE sha256 = d.sha256 ORDER BY at DESC, id DESC LIMIT 1) AND verdict <> 'undo'"
        )
        with mapped(self._path, "reading decisions"):
            return {row[0]: DecisionRecord(*row) for row in self._reader.execute(sql)}

    def retired(self) -> list[RetiredRecord]:
        """Every output set aside by a regeneration, oldest first."""
        sql = "SELECT unit_key, n, phase, path, sha256, job_id, at FROM retired ORDER BY id"
        with mapped(self._path, "reading retired outputs"):
            return [RetiredRecord(*row) for row in self._reader.execute(sql)]

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every resource of ``kind`` by key (e.g. the seeds regenerations drew, by unit key)."""
        with mapped(self._path, "reading resources"):
            rows = self._reader.execute("SELECT key, value_json FROM resources WHERE kind = ?", (kind,))
            return {key: dict(json.loads(value)) for key, value in rows}

    def review_counts(self) -> dict[str, int]:
        """Units with a current output judged ``rejected`` / ``approved`` (all judged outputs approved),
        and units ``regenerated`` so far (their older outputs are in ``retired``)."""
        with mapped(self._path, "counting review verdicts"):
            outputs = self._reader.execute("SELECT unit_key, sha256 FROM outputs WHERE sha256 IS NOT NULL")
            pairs = outputs.fetchall()
            regenerated = self._reader.execute("SELECT count(DISTINCT unit_key) FROM retired").fetchone()[0]
        return count_review(self.decisions(), pairs, regenerated)


class ReviewWrites(Writer):
    """The review's writes: a verdict, and a regeneration in one transaction (a mixin of the store)."""

    async def record_decision(
        self,
        sha256: str,
        verdict: str,
        *,
        note: str | None = None,
        path: str | None = None,
        item_id: str | None = None,
        at: datetime | None = None,
    ) -> DecisionRecord:
        """Append a verdict (``approve``, ``reject`` or ``undo``) for the asset with this sha256."""
        record = checked_decision(sha256, verdict, note, path, item_id, rfc3339(at or self._clock.now()))

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO decisions (sha256, verdict, note, path, item_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                (record.sha256, record.verdict, record.note, record.path, record.item_id, record.at),
            )

        await self._write(apply)
        return record

    async def regenerate(
        self, units: Mapping[str, str], retired: Sequence[RetiredRecord], seeds: Mapping[str, int]
    ) -> int:
        """Send units back to ``pending`` for a paid regeneration, in one transaction.

        ``units`` maps a unit key to why (``rejected`` or ``superseded``); their outputs are
        forgotten (``retired`` says where the old files went) and ``seeds`` records the seed each
        new request carries (resource kind ``seed``). Only done, succeeded, failed or pending units
        qualify: one with a job in flight is refused. Returns how many units changed phase."""
        now = self._now()

        def apply(conn: sqlite3.Connection) -> int:
            changed = 0
            for key, why in units.items():
                phase = expect(conn, key, "regenerate", CAN_REGENERATE)
                conn.execute("DELETE FROM outputs WHERE unit_key = ?", (key,))
                if phase is not Phase.PENDING:
                    self._transition(conn, key, Phase.PENDING, now, f"regenerate: {why}", FORGET)
                    changed += 1
            conn.executemany(
                "INSERT INTO retired (unit_key, n, phase, path, sha256, job_id, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.unit_key, r.n, r.phase, r.path, r.sha256, r.job_id, r.at) for r in retired],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO resources (kind, key, value_json, updated_at)"
                " VALUES ('seed', ?, ?, ?)",
                [(key, json.dumps({"seed": int(seed)}), now) for key, seed in seeds.items()],
            )
            return changed

        return await self._write(apply)

    async def hold(self, keys: Iterable[str], *, seconds: float = HOLD_S) -> set[str]:
        """Every one of ``keys`` the file has: the run lock already keeps every other writer out."""
        wanted = sorted(set(keys))

        def apply(conn: sqlite3.Connection) -> set[str]:
            found = (conn.execute("SELECT key FROM units WHERE key = ?", (k,)).fetchone() for k in wanted)
            return {row[0] for row in found if row is not None}

        return await self._write(apply)

    async def release(self, keys: Iterable[str]) -> int:
        """Nothing to let go of: a file has no claims."""
        return 0
