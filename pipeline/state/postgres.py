"""The shared state store: PostgreSQL, for several runs and several workers of one run.

Same contract as the SQLite store (tests/test_state_contract.py runs over both): every mutator
returns once the transaction holding its change committed, so the intent is in the database before
the POST leaves and the job id as soon as the answer arrives. Each mutator is one transaction on a
pooled async connection (psycopg 3 + psycopg-pool); reads are synchronous (see pgreads.py).

Claims: a worker that cooperates (``lease_s`` given) works only on units it holds under a live
lease; every write's UPDATE names the holder and checks the lease on the database clock, so a worker
that lost its lease cannot overwrite (:class:`~pipeline.errors.LeaseLostError`). A store opened
without a lease is exclusive: it writes units nobody holds under a live lease.
Claiming, heartbeats and takeovers are in pgclaims.py; the shared API limits in pglimits.py; how
every write is made (one transaction, the row locked and checked, the guarded transition) in pgwrites.py;
the writes about a unit's outputs (success, downloads, done, reopen, fresh URLs) in pgoutputs.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Set
from datetime import datetime
from typing import Any, Self

import psycopg
from psycopg_pool import AsyncConnectionPool

from pipeline import __version__
from pipeline.clock import Clock
from pipeline.errors import StateError
from pipeline.state.marks import SimpleMarks
from pipeline.state.pgchecks import OutputChecks
from pipeline.state.pgclaims import Claims
from pipeline.state.pgconn import connect_kwargs, holder_id, map_error, migrate
from pipeline.state.pglimits import SharedLimits
from pipeline.state.pgoutputs import PgOutputWrites
from pipeline.state.pgreads import PgReads, connect_reader
from pipeline.state.pgreview import PgReviewWrites
from pipeline.state.pgwrites import FORGET, FREE, MINE, Conn
from pipeline.state.records import (
    CAN_RECORD_JOB,
    CAN_SUBMIT,
    Phase,
    UnitLike,
    rfc3339,
)

__all__ = ["PostgresStore"]


class PostgresStore(SimpleMarks, PgReads, PgOutputWrites, PgReviewWrites, Claims):
    """One worker's handle on one run (``run``) of a shared state database.

    Open with ``async with await PostgresStore.open(url, clock=clock, run="catalog") as store``.
    """

    def __init__(
        self, url: str, run: str, pool: AsyncConnectionPool[Any], reader: psycopg.Connection[Any], *,
        clock: Clock, run_id: str, holder: str, lease_s: float | None,
    ) -> None:  # fmt: skip
        PgReads.__init__(self, url, run, reader)
        self._pool = pool
        self._clock = clock
        self.run_id = run_id
        self.holder = holder
        self.lease_s = lease_s
        self._guard = MINE if lease_s is not None else FREE
        self._closed = False

    @classmethod
    async def open(
        cls, url: str, *, clock: Clock, run: str, run_id: str | None = None, holder: str | None = None,
        lease_s: float | None = None, pool_size: int = 8, app_version: str = __version__,
    ) -> Self:  # fmt: skip
        """Connect, create or migrate the schema, register this worker. Errors (unreachable, wrong
        password, newer schema) are StateUnavailableError: exit 2, before any API request."""
        kwargs = {"autocommit": True, **connect_kwargs(url)}
        try:
            async with await psycopg.AsyncConnection.connect(url, **kwargs) as conn:  # type: ignore[arg-type]
                await migrate(conn, url, app_version)
        except psycopg.Error as exc:
            raise map_error(url, exc, "connecting") from exc
        reader = connect_reader(url)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs=kwargs, open=False, name="photogpt-state"
        )
        try:
            await pool.open(wait=True, timeout=15)
        except Exception as exc:
            reader.close()
            raise map_error(url, exc, "opening the connection pool") from exc
        store = cls(url, run, pool, reader, clock=clock, run_id=run_id or uuid.uuid4().hex[:12],
                    holder=holder or holder_id(), lease_s=lease_s)  # fmt: skip
        await store._tx(store._register)
        return store

    def output_checks(self) -> OutputChecks:
        """The start-up check of the run's published files, one worker at a time (pgchecks.py)."""
        return OutputChecks(self._pool, self._url, self.run, self.holder, run_id=self.run_id,
                            lease_s=float(self.lease_s or 60.0))  # fmt: skip

    def limits(self, key_hash: str) -> SharedLimits:
        """The API limits every worker on this key shares (rate pacer, learned cap, sweeper)."""
        return SharedLimits(self._pool, self._url, key_hash, self.holder)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def flush(self) -> None:
        """Nothing lingers here: every mutator committed before it returned."""

    async def aclose(self) -> None:
        """Let go of the units this worker holds, then close the pool and the read connection."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._tx(self._release_all, closing=True)
        except StateError:
            pass  # the leases run out by themselves; nothing is lost
        finally:
            await self._pool.close()
            self._reader.close()

    # ---- mutators -------------------------------------------------------------------------

    async def sync_units(self, units: Iterable[UnitLike]) -> int:
        """Insert new units as pending; existing rows stay untouched (several workers may sync at once)."""
        now = self._now()
        try:
            rows = [
                (self.run, u.key, u.item_id, u.step, int(u.index), u.upstream,
                 json.dumps(u.request, allow_nan=False), int(u.expected_outputs), now)
                for u in units
            ]  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise StateError(f"state database: change refused: {exc}") from exc

        async def apply(conn: Conn) -> int:
            await conn.execute("CREATE TEMP TABLE incoming (LIKE units INCLUDING DEFAULTS) ON COMMIT DROP")
            async with conn.cursor().copy(
                "COPY incoming (run, key, item_id, step, idx, upstream, request_json, expected_outputs,"
                " updated_at, phase) FROM STDIN"
            ) as copy:
                for row in rows:
                    await copy.write_row((*row, "pending"))
            cur = await conn.execute(
                "INSERT INTO units SELECT * FROM incoming ORDER BY key ON CONFLICT (run, key) DO NOTHING"
            )
            return cur.rowcount

        return await self._tx(apply)

    async def mark_submitting(self, key: str) -> int:
        """Record the intent to POST, committed on return. Returns attempts so far."""
        return await self._tx(lambda conn: self._intent(conn, key))

    async def _intent(self, conn: Conn, key: str, key_hash: str | None = None) -> int:
        await self._expect(conn, key, "mark submitting", CAN_SUBMIT)
        cur = await conn.execute(
            "SELECT must_reconcile FROM units WHERE run = %s AND key = %s", (self.run, key)
        )
        if (row := await cur.fetchone()) is not None and row[0]:
            raise StateError(
                f"unit {key}: cannot mark submitting: it was taken over while submitting; reconcile it "
                "from the job list first (it may have been paid for)"
            )
        tail = (
            ", attempts = attempts + 1, key_hash = coalesce(%(kh)s, key_hash), intent_at = clock_timestamp()"
        )
        await self._transition(conn, key, Phase.SUBMITTING, "intent", tail, kh=key_hash)
        return await self._attempts(conn, key)

    async def mark_submitted(self, key: str, job_id: str, at: datetime | None = None) -> None:
        """Record the job id. The same id again is a no-op; another id is refused."""
        when = rfc3339(at or self._clock.now())

        async def apply(conn: Conn) -> None:
            cur = await conn.execute(
                "SELECT phase, job_id FROM units WHERE run = %s AND key = %s", (self.run, key)
            )
            row = await cur.fetchone()
            if row is not None and row[0] == Phase.SUBMITTED and row[1] == job_id:
                return
            await self._expect(conn, key, "record a job id", CAN_RECORD_JOB)
            cur = await conn.execute(
                "SELECT key FROM units WHERE run = %s AND job_id = %s AND key <> %s", (self.run, job_id, key)
            )
            if (owner := await cur.fetchone()) is not None:
                raise StateError(f"job {job_id} already belongs to unit {owner[0]}, not to {key}")
            await self._transition(
                conn, key, Phase.SUBMITTED, f"job {job_id}",
                ", job_id = %(job)s, submitted_at = %(when)s, last_error = NULL, error_kind = NULL",
                job=job_id, when=when,
            )  # fmt: skip

        await self._tx(apply)

    async def put_resource(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Record a shared resource of this run durably."""
        text = json.dumps(dict(value), sort_keys=True)

        async def apply(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO resources (run, kind, key, value_json, updated_at) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (run, kind, key) DO UPDATE SET value_json = EXCLUDED.value_json,"
                " updated_at = EXCLUDED.updated_at",
                (self.run, kind, key, text, self._now()),
            )

        await self._tx(apply)

    async def _simple(self, key: str, to: Phase, allowed: Set[Phase], reason: str, kind: str | None) -> None:
        tail = ", last_error = %(reason)s, error_kind = %(kind)s"
        tail += ", finished_at = %(now)s" if to is Phase.FAILED else ""

        async def apply(conn: Conn) -> None:
            await self._expect(conn, key, f"mark {to}", allowed)
            await self._transition(conn, key, to, reason, tail, reason=reason, kind=kind)

        await self._tx(apply)

    async def reset(self, phase: Phase, keys: Iterable[str] | None = None) -> int:
        """Failed or unknown units (all, or ``keys``) back to pending, job id and outputs forgotten."""
        if phase not in (Phase.FAILED, Phase.UNKNOWN):
            raise StateError(f"reset works on failed or unknown units, not {phase}")
        wanted = None if keys is None else set(keys)

        async def apply(conn: Conn) -> int:
            cur = await conn.execute(
                "SELECT key, last_error FROM units WHERE run = %s AND phase = %s"
                " AND (holder IS NULL OR lease_until <= clock_timestamp()) ORDER BY key FOR UPDATE",
                (self.run, phase.value),
            )
            chosen = [(k, err) for k, err in await cur.fetchall() if wanted is None or k in wanted]
            for k, err in chosen:
                await conn.execute("DELETE FROM outputs WHERE run = %s AND unit_key = %s", (self.run, k))
                detail = f"reset from {phase}: {err or ''}"
                await self._transition(conn, k, Phase.PENDING, detail, FORGET, guard=FREE)
            return len(chosen)

        return await self._tx(apply)
