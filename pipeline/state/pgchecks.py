"""The start-up file check of a shared run: who does it, when one still counts, and the reopening.

A single run checks every done unit's recorded files before it starts (engine/diff.py) and fetches
missing ones again from their job. A shared run must too, but N workers stat-ing the same million
files would be N times the work for one answer. So one worker checks at a time, elected by a
session advisory lock that PostgreSQL drops by itself when that worker's connection dies, and the
check is recorded (``resources``: kind ``output_check``, on the database clock) so a worker joining
the same run skips it:

- a check that finished after this worker joined counts (it ran while we were starting);
- so does one that started while another live worker of the run (seen within a lease) was already
  there: the run has been going on since then;
- a check that never finished (its worker died) does not count: the next worker to find the lock
  free does it again.

Reopening is one transaction per page of units, each row locked and checked: only units still
``done`` and held by nobody move, by the lifecycle's ``files_missing`` event, to ``succeeded``
with the missing outputs cleared, so the workers claim them and download again from the job.
No migration: the record is a ``resources`` row, the lock a number.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from pipeline.state.lifecycle import Event, Phase, advance
from pipeline.state.pgconn import map_error

__all__ = ["CheckTurn", "OutputChecks", "Turn"]

_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%s, 13))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%s, 13))"

_COUNTS = """
SELECT EXISTS (
    SELECT 1 FROM resources c
    WHERE c.run = %(run)s AND c.kind = 'output_check' AND c.key = 'last'
      AND c.value_json::jsonb ? 'finished'
      AND ((c.value_json::jsonb ->> 'finished')::timestamptz
               >= (SELECT started_at FROM workers WHERE run = %(run)s AND holder = %(me)s)
           OR EXISTS (SELECT 1 FROM workers w
                      WHERE w.run = %(run)s AND w.holder <> %(me)s
                        AND w.started_at <= (c.value_json::jsonb ->> 'started')::timestamptz
                        AND w.seen_at > clock_timestamp() - make_interval(secs => %(lease)s))))
"""
_BEGIN = """
INSERT INTO resources (run, kind, key, value_json, updated_at)
VALUES (%(run)s, 'output_check', 'last',
        json_build_object('holder', %(me)s::text, 'started', clock_timestamp())::text,
        to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
ON CONFLICT (run, kind, key) DO UPDATE SET value_json = EXCLUDED.value_json, updated_at = EXCLUDED.updated_at
"""
_FINISH = """
UPDATE resources
SET value_json = (value_json::jsonb || jsonb_build_object(
        'finished', clock_timestamp(), 'checked', %(checked)s::bigint,
        'reopened', %(reopened)s::bigint))::text,
    updated_at = to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
WHERE run = %(run)s AND kind = 'output_check' AND key = 'last' AND value_json::jsonb ->> 'holder' = %(me)s
"""
_PAGE = """
WITH page AS MATERIALIZED (
    SELECT key FROM units WHERE run = %(run)s AND phase = 'done' AND key > %(after)s
    ORDER BY key LIMIT %(limit)s
)
SELECT p.key, o.n, o.path, o.bytes
FROM page p LEFT JOIN outputs o ON o.run = %(run)s AND o.unit_key = p.key
ORDER BY p.key, o.n
"""
_REOPEN = """
WITH chosen AS MATERIALIZED (
    SELECT key FROM units
    WHERE run = %(run)s AND key = ANY(%(keys)s) AND phase = %(source)s
      AND (holder IS NULL OR holder = %(me)s OR lease_until <= clock_timestamp())
    ORDER BY key
    FOR UPDATE
)
UPDATE units u SET phase = %(target)s, updated_at = %(now)s, run_id = %(run_id)s, must_reconcile = false
FROM chosen WHERE u.run = %(run)s AND u.key = chosen.key
RETURNING u.key
"""
_CLEAR = """
UPDATE outputs o SET path = NULL, bytes = NULL, sha256 = NULL, downloaded_at = NULL
FROM unnest(%(keys)s::text[], %(ns)s::int[]) AS m(k, n)
WHERE o.run = %(run)s AND o.unit_key = m.k AND o.n = m.n
"""


class Turn(enum.Enum):
    """What a worker asking to check the files is told."""

    MINE = "mine"  #: nobody else is checking and no check counts yet: this worker checks
    BUSY = "busy"  #: another worker is checking right now
    COUNTED = "counted"  #: a check of this run already counts for this worker


@dataclass(slots=True)
class CheckTurn:
    """The answer, and (for :attr:`Turn.MINE`) the figures to record when the check ends."""

    turn: Turn
    checked: int = 0
    reopened: int = 0
    #: False when the check stopped part-way (a signal): not recorded, so the next worker redoes it.
    complete: bool = True


@dataclass(frozen=True, slots=True)
class DoneOutput:
    """One recorded output of a done unit (``n`` is ``None`` for a done unit with none recorded)."""

    key: str
    n: int | None
    path: str | None
    bytes: int | None


class OutputChecks:
    """The file check of one run (``run``) for one worker (``holder``); see the module docstring."""

    def __init__(
        self, pool: AsyncConnectionPool[Any], url: str, run: str, holder: str, *, run_id: str, lease_s: float
    ) -> None:
        self._pool, self._url, self.run, self.holder = pool, url, run, holder
        self._run_id, self._lease_s = run_id, lease_s

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[CheckTurn]:
        """Whose turn it is. While a :attr:`Turn.MINE` turn is open this worker holds the lock;
        leaving it without an error, the check complete, records it as finished (with its figures)."""
        params: dict[str, Any] = {"run": self.run, "me": self.holder, "lease": self._lease_s}
        try:
            async with self._pool.connection() as conn:  # autocommit: the lock outlives statements
                row = await (await conn.execute(_LOCK, (self.run,))).fetchone()
                if not (row and row[0]):
                    yield CheckTurn(Turn.BUSY)
                    return
                try:
                    row = await (await conn.execute(_COUNTS, params)).fetchone()
                    if row and row[0]:
                        yield CheckTurn(Turn.COUNTED)
                        return
                    await conn.execute(_BEGIN, params)
                    mine = CheckTurn(Turn.MINE)
                    yield mine
                    if mine.complete:
                        figures = {"checked": mine.checked, "reopened": mine.reopened}
                        await conn.execute(_FINISH, {**params, **figures})
                finally:
                    with anyio.CancelScope(shield=True):
                        await conn.execute(_UNLOCK, (self.run,))
        except psycopg.Error as exc:
            raise map_error(self._url, exc, "checking the published files") from exc

    async def page(self, after: str, limit: int) -> list[DoneOutput]:
        """The recorded outputs of up to ``limit`` done units whose keys sort after ``after``."""
        params = {"run": self.run, "after": after, "limit": int(limit)}
        try:
            async with self._pool.connection() as conn:
                rows = await (await conn.execute(_PAGE, params)).fetchall()
        except psycopg.Error as exc:
            raise map_error(self._url, exc, "reading the done units' outputs") from exc
        return [DoneOutput(k, n, p, None if b is None else int(b)) for k, n, p, b in rows]

    async def reopen(self, missing: Mapping[str, Sequence[int]], *, now: str) -> list[str]:
        """Done units nobody holds whose files are gone, back to ``succeeded`` with those outputs to
        fetch again (the lifecycle's ``files_missing``), in one transaction. Returns the keys moved;
        a unit that changed meanwhile (claimed, reviewed, reopened by another worker) is left alone."""
        if not missing:
            return []
        source = Phase.DONE
        params: dict[str, Any] = {
            "run": self.run, "me": self.holder, "run_id": self._run_id, "now": now,
            "keys": sorted(missing), "source": source.value,
            "target": advance(source, Event.FILES_MISSING).value,
        }  # fmt: skip
        try:
            async with self._pool.connection() as conn, conn.transaction():
                moved = sorted(k for (k,) in await (await conn.execute(_REOPEN, params)).fetchall())
                pairs = [(k, n) for k in moved for n in missing[k]]
                if pairs:
                    ks, ns = zip(*pairs, strict=True)
                    await conn.execute(_CLEAR, {"run": self.run, "keys": list(ks), "ns": list(ns)})
                async with conn.cursor() as cur:
                    target = params["target"]
                    why = "missing in the output store: fetch again from the job"
                    await cur.executemany(
                        "INSERT INTO events (run, unit_key, at, phase, detail, holder)"
                        " VALUES (%s, %s, %s, %s, %s, %s)",
                        [(self.run, k, now, target, f"outputs {sorted(missing[k])} {why}", self.holder)
                         for k in moved],
                    )  # fmt: skip
        except psycopg.Error as exc:
            raise map_error(self._url, exc, "reopening units with missing files") from exc
        return moved
