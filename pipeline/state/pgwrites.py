"""How every write of the PostgreSQL store is made: one transaction, the unit's row locked and
checked, the phase set under this worker's claim and logged.

Why a guard in every UPDATE: a cooperating worker (``lease_s`` given) writes only units it holds
under a live lease, checked on the database clock, so a worker that lost its lease cannot overwrite
(:class:`~pipeline.errors.LeaseLostError`); an exclusive one writes units nobody else holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Set
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from pipeline.clock import Clock
from pipeline.errors import LeaseLostError, StateError
from pipeline.state.pgconn import map_error, redact_url
from pipeline.state.records import PHASES, SETTLED, Phase, rfc3339

__all__ = ["FORGET", "FREE", "MINE", "Conn", "PgWrites"]

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]
_DETAIL_MAX = 300
_QUIET = frozenset({Phase.SUCCEEDED, Phase.DONE})
#: The ``tail`` of a transition back to pending that forgets the job and its outcome.
FORGET = ", job_id = NULL, submitted_at = NULL, finished_at = NULL, last_error = NULL, error_kind = NULL"
#: Who may write a unit: in a cooperating store its holder under a live lease; in an exclusive one
#: anybody while no other worker holds a live lease on it.
MINE = "holder = %(me)s AND lease_until > clock_timestamp()"
FREE = "(holder IS NULL OR holder = %(me)s OR lease_until <= clock_timestamp())"


class PgWrites:
    """The write plumbing of :class:`~pipeline.state.postgres.PostgresStore` (a mixin)."""

    _url: str
    _pool: AsyncConnectionPool[Any]
    _clock: Clock
    _closed: bool
    _guard: str
    run: str
    run_id: str
    holder: str

    def _now(self) -> str:
        return rfc3339(self._clock.now())

    async def _tx(self, apply: Callable[[Conn], Awaitable[T]], *, closing: bool = False) -> T:
        """Run ``apply`` in one transaction; durable once this returns. Refusals roll it back."""
        if self._closed and not closing:
            raise StateError(f"state database {redact_url(self._url)}: the store is closed")
        try:
            async with self._pool.connection() as conn, conn.transaction():
                return await apply(conn)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.IntegrityError | psycopg.errors.DataError):
                raise StateError(f"state database: change refused: {exc}") from exc
            raise map_error(self._url, exc, "writing") from exc

    async def _expect(
        self, conn: Conn, key: str, action: str, allowed: Set[Phase], guard: str | None = None
    ) -> Phase:
        """Lock the unit's row, check this worker may write it and that ``action`` is allowed now."""
        guard = guard or self._guard
        cur = await conn.execute(
            f"SELECT phase, {guard.replace('%(me)s', '%s')}, holder FROM units"  # noqa: S608
            " WHERE run = %s AND key = %s FOR UPDATE",
            (self.holder, self.run, key),
        )
        row = await cur.fetchone()
        if row is None:
            raise StateError(f"cannot {action}: no unit with key {key!r} in run {self.run!r}")
        if not row[1]:
            raise LeaseLostError(
                f"unit {key}: cannot {action}: held by {row[2] or 'nobody'} (not by {self.holder})"
            )
        if (phase := PHASES[row[0]]) not in allowed:
            raise StateError(
                f"unit {key}: cannot {action} while {phase} (only from {'/'.join(sorted(allowed))})"
            )
        return phase

    async def _transition(
        self, conn: Conn, key: str, to: Phase, detail: str, tail: str = "", guard: str | None = None,
        **args: Any,
    ) -> None:  # fmt: skip
        """Set the phase (plus ``tail`` columns, fixed SQL text from the store's modules) under this
        worker's claim, and log an event for what a later change would overwrite. A settled unit is
        let go."""
        release = ", holder = NULL, lease_until = NULL" if to in SETTLED else ""
        release += "" if to is Phase.SUBMITTING else ", must_reconcile = false"
        cur = await conn.execute(
            f"UPDATE units SET phase = %(to)s, updated_at = %(now)s, run_id = %(run_id)s{tail}{release}"  # noqa: S608
            f" WHERE run = %(run)s AND key = %(key)s AND {guard or self._guard}",
            {"to": to.value, "now": self._now(), "run_id": self.run_id, "run": self.run, "key": key,
             "me": self.holder, **args},
        )  # fmt: skip
        if cur.rowcount != 1:
            raise LeaseLostError(f"unit {key}: the lease ran out before the change was written")
        if to not in _QUIET:
            await conn.execute(
                "INSERT INTO events (run, unit_key, at, phase, detail, holder)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (self.run, key, self._now(), to.value, detail[:_DETAIL_MAX], self.holder),
            )

    async def _attempts(self, conn: Conn, key: str) -> int:
        cur = await conn.execute("SELECT attempts FROM units WHERE run = %s AND key = %s", (self.run, key))
        row = await cur.fetchone()
        return int(row[0]) if row else 0
