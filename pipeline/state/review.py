"""The review (schema 2 of the state file): reviewers' verdicts, and the outputs regenerations set aside.

Verdicts are keyed by the asset's sha256 (so a regenerated file starts fresh) and append-only: the
newest per sha256 is the current one, ``undo`` clears it and keeps the history. ``review``, the
export and the gallery read them; ``--regenerate-rejected`` writes ``retired`` and the seeds.
Here: the records, the reads (part of every reader, :class:`~pipeline.state.sqlite_reads.Reads`)
and the two writes (part of :class:`~pipeline.state.sqlite.SqliteStore`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.errors import StateError
from pipeline.state.records import CAN_REGENERATE, Phase, rfc3339
from pipeline.state.sqlite_schema import mapped
from pipeline.state.sqlite_writer import FORGET, Writer, expect

__all__ = ["VERDICTS", "DecisionRecord", "RetiredRecord", "ReviewReads", "ReviewWrites"]


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A reviewer's verdict on one asset, keyed by its sha256 (so a regenerated file starts fresh)."""

    sha256: str
    verdict: str  #: ``approve`` or ``reject`` (``undo`` rows are history, never returned as current)
    note: str | None
    path: str | None  #: where the file was when judged (a hint for people; the key is the hash)
    item_id: str | None
    at: str


@dataclass(frozen=True, slots=True)
class RetiredRecord:
    """An output set aside by ``--regenerate-rejected``: ``phase`` is ``rejected`` (judged so) or
    ``superseded`` (a chain child, or a sibling output, of a rejected one)."""

    unit_key: str
    n: int
    phase: str
    path: str | None  #: where it now lives (under ``.rejected/``), or ``None`` if it was not on disk
    sha256: str | None
    job_id: str | None
    at: str


#: Verdicts a decision row may hold; ``undo`` clears the current verdict and keeps the history.
VERDICTS = frozenset({"approve", "reject", "undo"})


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
        verdicts = {sha: d.verdict for sha, d in self.decisions().items()}
        per_unit: dict[str, set[str]] = {}
        with mapped(self._path, "counting review verdicts"):
            for key, sha in self._reader.execute(
                "SELECT unit_key, sha256 FROM outputs WHERE sha256 IS NOT NULL"
            ):
                if sha in verdicts:
                    per_unit.setdefault(key, set()).add(verdicts[sha])
            regenerated = self._reader.execute("SELECT count(DISTINCT unit_key) FROM retired").fetchone()[0]
        return {
            "approved": sum(1 for v in per_unit.values() if v == {"approve"}),
            "rejected": sum(1 for v in per_unit.values() if "reject" in v),
            "regenerated": int(regenerated),
        }


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
        if verdict not in VERDICTS:
            raise StateError(f"a decision is approve, reject or undo, not {verdict!r}")
        sha = sha256.strip().lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise StateError(f"a decision needs the asset's sha256 (64 hex digits), not {sha256!r}")
        record = DecisionRecord(sha, verdict, note or None, path, item_id, rfc3339(at or self._clock.now()))

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
