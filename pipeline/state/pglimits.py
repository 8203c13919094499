"""API limits shared by every worker of every run on one API key, in the state database.

The request rate and the active-job cap belong to the key, not to a process: N workers pacing
themselves at ``--rate`` each would send N times too much. So:

- **one GCRA row per key** (keyed by a hash of the key; the key is never stored): every API request
  of every worker reserves the next slot with one UPDATE on the database clock and sleeps the wait
  it is given. GCRA keeps one timestamp (the theoretical arrival time, ``tat``): a request at ``t``
  moves it to ``max(tat, t) + 1/rate`` and may go at once if ``tat - t <= burst/rate``;
- **what one worker learns from a 429** (the rate that held, the cap the server named) is stored in
  the same row and read by all; the effective rate is the lower of the one set and the one learned;
- **one sweeper per key**: the worker holding the ``sweeper`` row's lease lists the jobs and stores
  what it saw in ``job_status``; the others read it instead of sweeping themselves. ``NOTIFY`` only
  wakes them early: missing one costs a poll interval, never correctness.

The active-job cap itself is counted where the intent is written (``PostgresStore.start_submission``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from pipeline.state.pgconn import connect_kwargs, map_error

__all__ = ["Charged", "InFlight", "KeyLimits", "SharedLimits", "Swept"]

CHANNEL = "photogpt_jobs"

_RESERVE = """
INSERT INTO api_limits AS l (key_hash) VALUES (%(kh)s) ON CONFLICT (key_hash) DO NOTHING;
"""
_CHARGE = """
WITH now AS (SELECT clock_timestamp() AS t)
UPDATE api_limits l
SET requests = l.requests + 1,
    tat = CASE WHEN least(l.rate_per_s, l.learned_rate) IS NULL THEN l.tat
               ELSE greatest(l.tat, now.t) + make_interval(secs => 1.0 / least(l.rate_per_s, l.learned_rate))
          END
FROM now
WHERE l.key_hash = %(kh)s
RETURNING CASE WHEN least(l.rate_per_s, l.learned_rate) IS NULL THEN 0.0
               ELSE greatest(0.0, extract(epoch FROM l.tat - now.t)
                                  - l.burst / least(l.rate_per_s, l.learned_rate))::float8
          END
"""
_CHARGE_REQUEST = """
WITH now AS (SELECT clock_timestamp() AS t)
UPDATE api_limits l
SET api_requests = l.api_requests + 1,
    req_tat = CASE WHEN l.learned_rate IS NULL THEN l.req_tat
                   ELSE greatest(l.req_tat, now.t) + make_interval(secs => 1.0 / l.learned_rate)
              END
FROM now
WHERE l.key_hash = %(kh)s
RETURNING CASE WHEN l.learned_rate IS NULL THEN 0.0
               ELSE greatest(0.0, extract(epoch FROM l.req_tat - now.t) - 1.0 / l.learned_rate)::float8
          END, l.api_requests, l.learned_rate
"""


@dataclass(frozen=True, slots=True)
class Charged:
    """One API request charged to the key: how long to wait before sending it, how many requests
    the key's workers have sent in all, and the request rate they share (None: none learned)."""

    wait_s: float
    requests: int
    learned_rate: float | None


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What the workers on one key know: the rate set, the rate and cap learned, requests charged."""

    rate_per_s: float | None
    learned_rate: float | None
    learned_cap: int | None
    requests: int

    @property
    def rate(self) -> float | None:
        """The rate every worker paces under together: the lower of the set and the learned one."""
        known = [r for r in (self.rate_per_s, self.learned_rate) if r is not None]
        return min(known) if known else None


@dataclass(frozen=True, slots=True)
class Swept:
    """What a sweep saw of one job: its status (the list's, normalised), and when known the
    server's creation time and the credits the list showed."""

    status: str
    created_at: datetime | None = None
    credits: float | None = None


@dataclass(frozen=True, slots=True)
class InFlight:
    """A job of the key running on the server, as the state records it (any worker, any run)."""

    job_id: str
    step: str
    #: When its intent was written (the database clock): shortly before the POST left, as a single
    #: run's watch takes it. Not the recorded answer time, which lags the job's creation by the
    #: answer and the write, by more than the sweep's margins on a busy host.
    intent_at: datetime | None


class SharedLimits:
    """The limits of one API key (``key_hash``) for one worker (``holder``)."""

    def __init__(self, pool: AsyncConnectionPool[Any], url: str, key_hash: str, holder: str) -> None:
        self._pool = pool
        self._url = url
        self.key_hash = key_hash
        self.holder = holder

    async def _run(self, sql: str, params: Mapping[str, Any] | Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cur = await conn.execute(sql, params)
                return list(await cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            raise map_error(self._url, exc, "updating the shared API limits") from exc

    async def configure(self, *, rate_per_s: float | None = None, burst: int = 1) -> None:
        """Create the key's row; ``rate_per_s`` (``--rate``, a total for the key) replaces the set rate."""
        await self._run(
            "INSERT INTO api_limits (key_hash, rate_per_s, burst) VALUES (%(kh)s, %(rate)s, %(burst)s)"
            " ON CONFLICT (key_hash) DO UPDATE SET burst = EXCLUDED.burst,"
            " rate_per_s = coalesce(EXCLUDED.rate_per_s, api_limits.rate_per_s)",
            {"kh": self.key_hash, "rate": rate_per_s, "burst": max(1, int(burst))},
        )

    async def reserve(self) -> float:
        """Charge one API request to the key; returns how long to wait before sending it (seconds)."""
        rows = await self._run(_CHARGE, {"kh": self.key_hash})
        if not rows:  # no row yet: create it, then charge
            await self._run(_RESERVE, {"kh": self.key_hash})
            rows = await self._run(_CHARGE, {"kh": self.key_hash})
        return float(rows[0][0]) if rows else 0.0

    async def charge_request(self) -> Charged:
        """Charge one API request (any kind) to the key's request-rate GCRA, paced at the rate
        learned from 429s (none learned: no wait, only counted)."""
        rows = await self._run(_CHARGE_REQUEST, {"kh": self.key_hash})
        if not rows:
            await self._run(_RESERVE, {"kh": self.key_hash})
            rows = await self._run(_CHARGE_REQUEST, {"kh": self.key_hash})
        wait, requests, rate = rows[0]
        return Charged(float(wait), int(requests), None if rate is None else float(rate))

    async def learn(self, *, rate_per_s: float | None = None, cap: int | None = None) -> None:
        """Share what a 429 taught: the rate that holds, the server's active-job cap.

        A cap only ever goes down: each one learned is the count of jobs the key had running when
        the server refused one more, never below the server's real cap, so the lowest is the best."""
        await self._run(
            "INSERT INTO api_limits (key_hash, learned_rate, learned_cap) VALUES (%(kh)s, %(rate)s, %(cap)s)"
            " ON CONFLICT (key_hash) DO UPDATE SET"
            " learned_rate = coalesce(EXCLUDED.learned_rate, api_limits.learned_rate),"
            " learned_cap = coalesce(least(EXCLUDED.learned_cap, api_limits.learned_cap),"
            " api_limits.learned_cap),"
            " updated_at = clock_timestamp()",
            {"kh": self.key_hash, "rate": rate_per_s, "cap": cap},
        )

    async def read(self) -> KeyLimits:
        """What every worker knows about the key now."""
        rows = await self._run(
            "SELECT rate_per_s, learned_rate, learned_cap, requests FROM api_limits WHERE key_hash = %s",
            (self.key_hash,),
        )
        if not rows:
            return KeyLimits(None, None, None, 0)
        rate, learned, cap, requests = rows[0]
        return KeyLimits(rate, learned, cap, int(requests))

    async def active(self, *, created_only: bool = False) -> int:
        """Jobs of this key submitting or running, over every run in the database (``created_only``:
        running only, the ones whose id is recorded)."""
        phases = ["submitted"] if created_only else ["submitting", "submitted"]
        rows = await self._run(
            "SELECT count(*) FROM units WHERE key_hash = %s AND phase = ANY(%s)", (self.key_hash, phases)
        )
        return int(rows[0][0])

    async def lead_sweeps(self, lease_s: float) -> bool:
        """Try to be (or stay) the key's sweeper for ``lease_s``; True when this worker is it."""
        rows = await self._run(
            "INSERT INTO sweeper (key_hash, holder, lease_until)"
            " VALUES (%(kh)s, %(me)s, clock_timestamp() + make_interval(secs => %(lease)s))"
            " ON CONFLICT (key_hash) DO UPDATE SET holder = EXCLUDED.holder,"
            " lease_until = EXCLUDED.lease_until"
            " WHERE sweeper.holder = %(me)s OR sweeper.lease_until <= clock_timestamp()"
            " RETURNING holder",
            {"kh": self.key_hash, "me": self.holder, "lease": float(lease_s)},
        )
        return bool(rows)

    async def resign_sweeps(self) -> None:
        """This worker stops sweeping (it exits): another may take over at once."""
        await self._run(
            "DELETE FROM sweeper WHERE key_hash = %s AND holder = %s", (self.key_hash, self.holder)
        )
        await self._run(  # what sweeps saw long ago is nobody's business any more
            "DELETE FROM job_status WHERE key_hash = %s AND seen_at < clock_timestamp() - interval '2 days'",
            (self.key_hash,),
        )

    async def sweeper(self) -> str | None:
        """The worker sweeping for the key now (a live lease), or None: nobody is."""
        rows = await self._run(
            "SELECT holder FROM sweeper WHERE key_hash = %s AND lease_until > clock_timestamp()",
            (self.key_hash,),
        )
        return str(rows[0][0]) if rows else None

    async def in_flight(self) -> list[InFlight]:
        """Every job of the key with a recorded id and not yet seen ending, over every run: what
        the sweeper lists for all workers."""
        rows = await self._run(
            "SELECT job_id, step, intent_at FROM units"
            " WHERE key_hash = %s AND phase = 'submitted' AND job_id IS NOT NULL",
            (self.key_hash,),
        )
        return [InFlight(str(j), str(s), t) for j, s, t in rows]

    async def publish(self, statuses: Mapping[str, str | Swept]) -> None:
        """The sweeper stores what a sweep saw (job id -> status) and wakes the others."""
        if not statuses:
            return
        seen = {j: s if isinstance(s, Swept) else Swept(s) for j, s in statuses.items()}
        rows = [(self.key_hash, j, v.status, v.created_at, v.credits) for j, v in sorted(seen.items())]
        try:
            async with self._pool.connection() as conn, conn.transaction():
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO job_status (key_hash, job_id, status, created_at, credits)"
                        " VALUES (%s, %s, %s, %s, %s)"
                        " ON CONFLICT (key_hash, job_id) DO UPDATE SET status = EXCLUDED.status,"
                        " created_at = coalesce(EXCLUDED.created_at, job_status.created_at),"
                        " credits = coalesce(EXCLUDED.credits, job_status.credits),"
                        " seen_at = clock_timestamp()",
                        rows,
                    )
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.key_hash))
        except psycopg.Error as exc:
            raise map_error(self._url, exc, "sharing job statuses") from exc

    async def listen(self, on_news: Callable[[], None]) -> None:
        """Call ``on_news`` each time a sweeper stored statuses for this key (``NOTIFY``), until
        cancelled. A hint only: on a database error it stops, and the workers read at their pace."""
        kwargs = {"autocommit": True, **connect_kwargs(self._url)}
        try:
            async with await psycopg.AsyncConnection.connect(self._url, **kwargs) as conn:  # type: ignore[arg-type]
                await conn.execute(f"LISTEN {CHANNEL}")
                async for note in conn.notifies():
                    if note.payload == self.key_hash:
                        on_news()
        except psycopg.Error:
            return

    async def statuses(self, job_ids: Sequence[str], *, max_age_s: float) -> dict[str, str]:
        """What the sweeper saw of these jobs within the last ``max_age_s`` seconds (an ending: ever)."""
        return {j: s.status for j, s in (await self._swept(job_ids, max_age_s)).items()}

    async def swept(self, job_ids: Sequence[str], *, max_age_s: float) -> dict[str, Swept] | None:
        """What a live sweeper saw of these jobs within ``max_age_s``; None when no worker holds
        the sweeper lease (it died, or none was elected yet): then each lists for itself."""
        if await self.sweeper() is None:
            return None
        return await self._swept(job_ids, max_age_s)

    async def _swept(self, job_ids: Sequence[str], max_age_s: float) -> dict[str, Swept]:
        rows = await self._run(
            "SELECT job_id, status, created_at, credits FROM job_status WHERE key_hash = %s"
            " AND job_id = ANY(%s) AND (seen_at > clock_timestamp() - make_interval(secs => %s)"
            " OR status IN ('success', 'failed'))",  # an ending never goes stale
            (self.key_hash, list(job_ids), float(max_age_s)),
        )
        return {j: Swept(s, c, cr) for j, s, c, cr in rows}
