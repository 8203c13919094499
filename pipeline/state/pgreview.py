"""The review on the shared PostgreSQL state (schema 2, migrations/0002_review.sql), per run.

The same contract as the SQLite file's (pipeline/state/review.py; tests/test_review_contract.py
runs over both). What differs is who else may write: several workers of the run, while a reviewer
decides or a regeneration starts. A verdict touches no unit, so it is always safe. A regeneration
holds its units first (:meth:`PgReviewWrites.hold`: a short lease of its own, only on units no
live worker holds), moves their files, then writes them back to ``pending`` under that hold
(``MINE``: a hold that ran out and was taken over is refused, never overwritten) and lets go.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import psycopg

from pipeline.state.pgwrites import FORGET, FREE, MINE, Conn, PgWrites
from pipeline.state.records import CAN_REGENERATE, Phase, rfc3339
from pipeline.state.review_store import (
    HOLD_S,
    DecisionRecord,
    RetiredRecord,
    checked_decision,
    count_review,
)

__all__ = ["PgReviewReads", "PgReviewWrites"]

_CURRENT = (
    "SELECT sha256, verdict, note, path, item_id, at FROM (SELECT DISTINCT ON (sha256) sha256, verdict,"
    " note, path, item_id, at, id FROM decisions WHERE run = %s ORDER BY sha256, at DESC, id DESC) d"
    " WHERE verdict <> 'undo' ORDER BY id"
)


class PgReviewReads:
    """The review's reads of one run (a mixin of :class:`~pipeline.state.pgreads.PgReads`)."""

    run: str
    #: ``False`` on a read-only view of a schema-1 database (older workers only): it migrates
    #: nothing, so it has no review tables yet and reads no verdicts rather than failing.
    _review_tables: bool = True

    def _snapshot(self, doing: str) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def decisions(self) -> dict[str, DecisionRecord]:
        """The current verdict per sha256: the newest by time wins (equal times: the later row);
        an ``undo`` leaves none."""
        if not self._review_tables:
            return {}
        with self._snapshot("reading decisions") as conn:
            return {row[0]: DecisionRecord(*row) for row in conn.execute(_CURRENT, (self.run,))}

    def retired(self) -> list[RetiredRecord]:
        """Every output of this run set aside by a regeneration, oldest first."""
        if not self._review_tables:
            return []
        sql = "SELECT unit_key, n, phase, path, sha256, job_id, at FROM retired WHERE run = %s ORDER BY id"
        with self._snapshot("reading retired outputs") as conn:
            return [RetiredRecord(*row) for row in conn.execute(sql, (self.run,))]

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every resource of ``kind`` of this run by key (e.g. the seeds regenerations drew)."""
        sql = "SELECT key, value_json FROM resources WHERE run = %s AND kind = %s"
        with self._snapshot("reading resources") as conn:
            return {key: dict(json.loads(value)) for key, value in conn.execute(sql, (self.run, kind))}

    def review_counts(self) -> dict[str, int]:
        """``approved``, ``rejected`` (not yet regenerated) and ``regenerated`` unit counts."""
        if not self._review_tables:
            return count_review({}, (), 0)
        decisions = self.decisions()
        with self._snapshot("counting review verdicts") as conn:
            pairs: Iterator[tuple[str, str]] = iter(
                conn.execute(
                    "SELECT unit_key, sha256 FROM outputs WHERE run = %s AND sha256 IS NOT NULL", (self.run,)
                ).fetchall()
            )
            row = conn.execute(
                "SELECT count(DISTINCT unit_key) FROM retired WHERE run = %s", (self.run,)
            ).fetchone()
        return count_review(decisions, pairs, int(row[0]) if row else 0)


class PgReviewWrites(PgWrites):
    """The review's writes (a mixin of :class:`~pipeline.state.postgres.PostgresStore`)."""

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
        """Append a verdict for the asset with this sha256 (touches no unit: safe while workers run)."""
        record = checked_decision(sha256, verdict, note, path, item_id, rfc3339(at or self._clock.now()))

        async def apply(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO decisions (run, sha256, verdict, note, path, item_id, at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (self.run, record.sha256, record.verdict, record.note, record.path, record.item_id,
                 record.at),
            )  # fmt: skip

        await self._tx(apply)
        return record

    async def hold(self, keys: Iterable[str], *, seconds: float = HOLD_S) -> set[str]:
        """A lease of this process on each of ``keys`` that no other worker holds under a live lease
        (a row being written is waited for, then checked again); returns the keys held."""
        params = {"run": self.run, "me": self.holder, "secs": float(seconds), "keys": sorted(set(keys))}

        async def apply(conn: Conn) -> set[str]:
            cur = await conn.execute(
                "UPDATE units SET holder = %(me)s,"  # noqa: S608 - FREE is fixed SQL text
                " lease_until = clock_timestamp() + make_interval(secs => %(secs)s)"
                f" WHERE run = %(run)s AND key = ANY(%(keys)s) AND {FREE} RETURNING key",
                params,
            )
            return {k for (k,) in await cur.fetchall()}

        return await self._tx(apply)

    async def regenerate(
        self, units: Mapping[str, str], retired: Sequence[RetiredRecord], seeds: Mapping[str, int]
    ) -> int:
        """Held units back to ``pending`` in one transaction (see ReviewStore.regenerate); a unit
        this process no longer holds is refused (LeaseLostError) and nothing is written."""
        now = self._now()

        async def apply(conn: Conn) -> int:
            changed = 0
            for key, why in units.items():
                phase = await self._expect(conn, key, "regenerate", CAN_REGENERATE, MINE)
                await conn.execute("DELETE FROM outputs WHERE run = %s AND unit_key = %s", (self.run, key))
                if phase is not Phase.PENDING:
                    await self._transition(conn, key, Phase.PENDING, f"regenerate: {why}", FORGET, guard=MINE)
                    changed += 1
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO retired (run, unit_key, n, phase, path, sha256, job_id, at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(self.run, r.unit_key, r.n, r.phase, r.path, r.sha256, r.job_id, r.at) for r in retired],
                )
                await cur.executemany(
                    "INSERT INTO resources (run, kind, key, value_json, updated_at)"
                    " VALUES (%s, 'seed', %s, %s, %s)"
                    " ON CONFLICT (run, kind, key) DO UPDATE SET value_json = EXCLUDED.value_json,"
                    " updated_at = EXCLUDED.updated_at",
                    [(self.run, key, json.dumps({"seed": int(seed)}), now) for key, seed in seeds.items()],
                )
            await conn.execute(
                "UPDATE units SET holder = NULL, lease_until = NULL"
                " WHERE run = %s AND holder = %s AND key = ANY(%s)",
                (self.run, self.holder, sorted(units)),
            )
            return changed

        return await self._tx(apply)
