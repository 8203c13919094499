"""Claims with leases: how workers of one run split its units, and take over a dead worker's.

Learned from procrastinate, pgqueuer, Oban and River (all ``FOR UPDATE SKIP LOCKED``), and from two
of their bugs:

- the claiming CTE is ``MATERIALIZED``: a barrier the planner cannot inline into the UPDATE, which
  could otherwise lock and update more rows than the LIMIT (Oban);
- leases and expiries are on the database clock (``clock_timestamp()``): workers on several hosts
  agree on when a lease ended even when their own clocks do not.

A claim is a lease (``holder``, ``lease_until``); the holder renews it with :meth:`Claims.renew`
(a heartbeat) while it works. A unit whose lease ran out is claimable by anyone. Our rule is
stricter than theirs: a unit claimed in ``submitting`` (its holder died, or gave it up, between the
intent and the job id) is flagged ``must_reconcile``; the store refuses a new intent for it until a
reconciliation moved it on, so a paid POST is never re-run because a lease expired.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from pipeline.errors import StateError
from pipeline.state.records import PHASES, Phase

__all__ = ["Claimed", "Claims", "Progress"]

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

_CLAIM = """
WITH picked AS MATERIALIZED (
    SELECT u.key, u.holder AS prev
    FROM units u
    WHERE u.run = %(run)s
      AND u.phase NOT IN ('done', 'failed', 'unknown')
      AND (u.holder IS NULL OR u.lease_until <= clock_timestamp())
      AND (NOT %(expired)s OR u.lease_until <= clock_timestamp())
      AND (u.upstream IS NULL OR EXISTS (
            SELECT 1 FROM units up WHERE up.run = u.run AND up.key = u.upstream AND up.phase = 'done'))
    ORDER BY u.item_id, u.step, u.idx
    LIMIT %(limit)s
    FOR UPDATE OF u SKIP LOCKED
),
orphans AS MATERIALIZED (
    SELECT u.key, u.holder AS prev
    FROM units u
    WHERE u.run = %(run)s AND u.phase = 'submitting'
      AND (u.holder IS NULL OR u.lease_until <= clock_timestamp())
      AND u.key NOT IN (SELECT key FROM picked)
      AND EXISTS (SELECT 1 FROM picked p JOIN units x ON x.run = %(run)s AND x.key = p.key
                  WHERE x.phase = 'submitting')
    FOR UPDATE OF u SKIP LOCKED
)
UPDATE units t
SET holder = %(me)s,
    lease_until = clock_timestamp() + make_interval(secs => %(lease)s),
    must_reconcile = t.must_reconcile OR t.phase = 'submitting'
FROM (SELECT key, prev FROM picked UNION ALL SELECT key, prev FROM orphans) AS p
WHERE t.run = %(run)s AND t.key = p.key
RETURNING t.key, t.phase, p.prev, t.must_reconcile
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A unit this worker now holds. ``taken_from``: the worker whose lease ran out, if any."""

    key: str
    phase: Phase
    taken_from: str | None
    must_reconcile: bool  #: it was ``submitting`` under a dead holder: reconcile before any POST


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the run is, for a worker deciding whether to wait, claim or exit."""

    open: int  #: units not settled (done, failed, unknown)
    held_by_others: int  #: of those, held by another worker under a live lease
    held_by_me: int

    @property
    def settled(self) -> bool:
        """Every unit of the run is done, failed or unknown: a worker may exit."""
        return self.open == 0


class Claims:
    """The claim/lease half of :class:`~pipeline.state.postgres.PostgresStore` (a mixin)."""

    run: str
    holder: str
    lease_s: float | None

    async def _tx(self, apply: Callable[[Conn], Awaitable[T]], *, closing: bool = False) -> T:
        raise NotImplementedError

    async def _intent(self, conn: Conn, key: str, key_hash: str | None = None) -> int:
        raise NotImplementedError

    def _lease(self) -> float:
        if self.lease_s is None:
            raise StateError("claims need a lease: open the store with lease_s")
        return float(self.lease_s)

    async def claim(self, limit: int, *, expired_only: bool = False) -> list[Claimed]:
        """Claim up to ``limit`` open units nobody holds (or whose lease ran out), in manifest order;
        ``expired_only``: only units whose holder's lease ran out (a dead worker's: take them over).

        A unit is claimable once its upstream is done: chains go step by step, and a unit behind a
        failed or unknown upstream is never claimed (it is blocked, as in a single run)."""
        params = {"run": self.run, "me": self.holder, "lease": self._lease(), "limit": int(limit),
                  "expired": expired_only}  # fmt: skip

        async def apply(conn: Conn) -> list[Claimed]:
            # Claims of one run take turns: the claim after this one sees what this one took, and
            # a dead worker's uncertain intents all go to one worker (orphans), which reconciles
            # them together, as a single run does after a crash.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 11))", (self.run,))
            cur = await conn.execute(_CLAIM, params)
            got = [Claimed(k, PHASES[p], prev if prev != self.holder else None, bool(r))
                   for k, p, prev, r in await cur.fetchall()]  # fmt: skip
            taken = [c for c in got if c.taken_from is not None]
            if taken:
                async with conn.cursor() as c:
                    await c.executemany(
                        "INSERT INTO events (run, unit_key, at, phase, detail, holder)"
                        " VALUES (%s, %s, to_char(clock_timestamp() AT TIME ZONE 'UTC',"
                        " 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), %s, %s, %s)",
                        [(self.run, t.key, t.phase.value, f"taken over from {t.taken_from}"
                          + (": reconcile before any POST" if t.must_reconcile else ""), self.holder)
                         for t in taken],
                    )  # fmt: skip
            await self._seen(conn)
            return sorted(got, key=lambda c: c.key)

        return await self._tx(apply)

    async def _seen(self, conn: Conn) -> None:
        await conn.execute(
            "INSERT INTO workers (run, holder) VALUES (%s, %s)"
            " ON CONFLICT (run, holder) DO UPDATE SET seen_at = clock_timestamp()",
            (self.run, self.holder),
        )

    async def _register(self, conn: Conn) -> None:
        """A worker of the run joins (the store's ``open``)."""
        await conn.execute(
            "INSERT INTO workers (run, holder) VALUES (%s, %s)"
            " ON CONFLICT (run, holder) DO UPDATE SET seen_at = clock_timestamp()",
            (self.run, self.holder),
        )

    async def _release_all(self, conn: Conn) -> None:
        """A worker leaves (the store's ``aclose``): its units go back to the pool at once."""
        await conn.execute(
            "UPDATE units SET holder = NULL, lease_until = NULL WHERE run = %s AND holder = %s",
            (self.run, self.holder),
        )
        await conn.execute("DELETE FROM workers WHERE run = %s AND holder = %s", (self.run, self.holder))

    async def renew(self) -> set[str]:
        """The heartbeat: extend every live lease this worker holds; returns the keys it still holds.

        A key missing from the answer was lost (the lease ran out, maybe taken over): stop working
        on it. Its writes would be refused anyway."""
        params = {"run": self.run, "me": self.holder, "lease": self._lease()}

        async def apply(conn: Conn) -> set[str]:
            cur = await conn.execute(
                "UPDATE units SET lease_until = clock_timestamp() + make_interval(secs => %(lease)s)"
                " WHERE run = %(run)s AND holder = %(me)s AND lease_until > clock_timestamp() RETURNING key",
                params,
            )
            await self._seen(conn)
            return {k for (k,) in await cur.fetchall()}

        return await self._tx(apply)

    async def release(self, keys: Iterable[str]) -> int:
        """Let go of units this worker holds (it will not work on them); returns how many."""
        chosen = sorted(set(keys))

        async def apply(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE units SET holder = NULL, lease_until = NULL"
                " WHERE run = %s AND holder = %s AND key = ANY(%s)",
                (self.run, self.holder, chosen),
            )
            return cur.rowcount

        return await self._tx(apply)

    async def start_submission(self, key: str, *, key_hash: str, cap: int) -> int | None:
        """The intent under the API key's active-job cap: ``None`` (nothing written) when the key
        already has ``cap`` jobs (or the cap a 429 taught any worker) submitting or running, or
        ``cap // 8`` (at least 4) POSTs in flight: the first time the server's own cap is met, only
        that many can be refused before every worker learns it.

        The count cannot overshoot under concurrency (pgqueuer#761): the advisory lock is taken in
        a statement of its own, so the count after it runs in a new snapshot (READ COMMITTED) that
        sees every intent committed by the workers that held the lock before."""

        async def apply(conn: Conn) -> int | None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", (key_hash,))
            cur = await conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE phase = 'submitting' AND NOT must_reconcile"
                "   AND intent_at > clock_timestamp() - interval '60 seconds'),"
                " (SELECT learned_cap FROM api_limits WHERE key_hash = %(kh)s)"
                " FROM units WHERE key_hash = %(kh)s AND phase IN ('submitting', 'submitted')",
                {"kh": key_hash},
            )
            row = await cur.fetchone()
            assert row is not None
            active, in_flight, learned = int(row[0]), int(row[1]), row[2]
            if active >= min(cap, learned or cap) or in_flight >= max(4, cap // 8):
                return None
            return await self._intent(conn, key, key_hash)

        return await self._tx(apply)

    async def others_submitting(self, keys: Iterable[str], *, batch: Iterable[str] | None = None) -> int:
        """Units of the run in ``submitting`` under another worker's live lease, ``keys`` aside: POSTs
        in flight elsewhere, whose jobs the job list may show before their ids are recorded.
        ``batch``: the units of the asking batch; this worker's own intents outside it (another of
        its batches, running at the same time) count too.

        Not counted: units waiting to be reconciled themselves, and intents older than a minute (an
        uncertain POST of another worker): two reconcilers must never wait for each other."""
        params = {"run": self.run, "me": self.holder, "keys": sorted(set(keys)),
                  "batch": None if batch is None else sorted(set(batch))}  # fmt: skip

        async def apply(conn: Conn) -> int:
            cur = await conn.execute(
                "SELECT count(*) FROM units WHERE run = %(run)s AND phase = 'submitting'"
                " AND NOT must_reconcile AND intent_at > clock_timestamp() - interval '60 seconds'"
                " AND (holder <> %(me)s OR NOT key = ANY(coalesce(%(batch)s::text[], ARRAY[key])))"
                " AND lease_until > clock_timestamp() AND NOT key = ANY(%(keys)s)",
                params,
            )
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._tx(apply)

    async def progress(self) -> Progress:
        """Open units, and how many of them other workers hold: exit, wait or claim."""

        async def apply(conn: Conn) -> Progress:
            cur = await conn.execute(
                "SELECT count(*),"
                " count(*) FILTER (WHERE holder <> %(me)s AND lease_until > clock_timestamp()),"
                " count(*) FILTER (WHERE holder = %(me)s AND lease_until > clock_timestamp())"
                " FROM units WHERE run = %(run)s AND phase NOT IN ('done', 'failed', 'unknown')",
                {"run": self.run, "me": self.holder},
            )
            row = await cur.fetchone()
            assert row is not None
            return Progress(int(row[0]), int(row[1]), int(row[2]))

        return await self._tx(apply)
