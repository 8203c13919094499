"""The PostgreSQL store's writes about a unit's outputs: the success that records them, each
download, closing the unit, reopening it when files are gone, and fresh URLs for expired ones.

Each is one transaction through :class:`~pipeline.state.pgwrites.PgWrites` (row locked and
checked, the guarded transition), as every write of :class:`~pipeline.state.postgres.PostgresStore`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from pipeline.errors import StateError
from pipeline.state.pgwrites import FREE, Conn, PgWrites
from pipeline.state.records import CAN_FINISH, CAN_REOPEN, CAN_SUCCEED, Phase, rfc3339

__all__ = ["PgOutputWrites"]


class PgOutputWrites(PgWrites):
    """The output writes of :class:`~pipeline.state.postgres.PostgresStore` (a mixin)."""

    async def mark_succeeded(self, key: str, outputs: Sequence[tuple[str, str]]) -> None:
        """The job finished: record its outputs as (asset_id, url), numbered from 1."""
        outs = [(str(a), str(u)) for a, u in outputs]
        if not outs:
            raise StateError(f"unit {key}: a success needs at least one output (mark it failed instead)")

        async def apply(conn: Conn) -> None:
            await self._expect(conn, key, "mark succeeded", CAN_SUCCEED)
            await conn.execute("DELETE FROM outputs WHERE run = %s AND unit_key = %s", (self.run, key))
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO outputs (run, unit_key, n, asset_id, url) VALUES (%s, %s, %s, %s, %s)",
                    [(self.run, key, n, a, u) for n, (a, u) in enumerate(outs, 1)],
                )
            await self._transition(
                conn, key, Phase.SUCCEEDED, f"{len(outs)} outputs", ", finished_at = %(now)s"
            )

        await self._tx(apply)

    async def record_download(
        self,
        key: str,
        n: int,
        *,
        path: str,
        bytes: int,
        sha256: str,
        at: datetime | None = None,
        done: bool = False,
    ) -> None:
        """Record that output ``n`` is published and verified; ``done``: close the unit too."""
        when = rfc3339(at or self._clock.now())

        async def apply(conn: Conn) -> None:
            await self._expect(conn, key, "record a download", {Phase.SUCCEEDED})
            cur = await conn.execute(
                "UPDATE outputs SET path = %s, bytes = %s, sha256 = %s, downloaded_at = %s"
                " WHERE run = %s AND unit_key = %s AND n = %s",
                (path, int(bytes), sha256, when, self.run, key, int(n)),
            )
            if cur.rowcount != 1:
                raise StateError(f"unit {key} has no output {n}")
            await conn.execute(
                "UPDATE units SET updated_at = %s, run_id = %s WHERE run = %s AND key = %s",
                (self._now(), self.run_id, self.run, key),
            )
            if done:
                await self._close(conn, key)

        await self._tx(apply)

    async def mark_done(self, key: str) -> None:
        """Close the unit: refused while any recorded output is not downloaded."""
        await self._tx(lambda conn: self._close(conn, key))

    async def _close(self, conn: Conn, key: str) -> None:
        await self._expect(conn, key, "mark done", CAN_FINISH)
        cur = await conn.execute(
            "SELECT n FROM outputs WHERE run = %s AND unit_key = %s AND downloaded_at IS NULL ORDER BY n",
            (self.run, key),
        )
        if missing := [n for (n,) in await cur.fetchall()]:
            raise StateError(f"unit {key}: outputs {missing} are not downloaded yet")
        await self._transition(conn, key, Phase.DONE, "done")

    async def reopen(self, key: str, missing: Iterable[int]) -> None:
        """A done unit whose files are gone: back to succeeded with those outputs to fetch again."""
        numbers = sorted(set(missing))

        async def apply(conn: Conn) -> None:
            await self._expect(conn, key, "reopen", CAN_REOPEN, FREE)
            await conn.execute(
                "UPDATE outputs SET path = NULL, bytes = NULL, sha256 = NULL, downloaded_at = NULL"
                " WHERE run = %s AND unit_key = %s AND n = ANY(%s)",
                (self.run, key, numbers),
            )
            await self._transition(
                conn, key, Phase.SUCCEEDED, f"outputs {numbers} missing on disk", guard=FREE
            )

        await self._tx(apply)

    async def update_urls(self, key: str, outputs: Sequence[tuple[str, str]]) -> None:
        """Replace expired URLs with fresh ones; asset ids must match."""
        outs = [(str(a), str(u)) for a, u in outputs]

        async def apply(conn: Conn) -> None:
            await self._expect(conn, key, "update URLs", {Phase.SUCCEEDED})
            cur = await conn.execute(
                "SELECT asset_id FROM outputs WHERE run = %s AND unit_key = %s ORDER BY n", (self.run, key)
            )
            have, fresh = [a for (a,) in await cur.fetchall()], [a for a, _ in outs]
            if have != fresh:
                raise StateError(f"unit {key}: fresh outputs {fresh} do not match the recorded {have}")
            async with conn.cursor() as c:
                await c.executemany(
                    "UPDATE outputs SET url = %s WHERE run = %s AND unit_key = %s AND n = %s",
                    [(u, self.run, key, n) for n, (_, u) in enumerate(outs, 1)],
                )
            await conn.execute(
                "UPDATE units SET updated_at = %s, run_id = %s WHERE run = %s AND key = %s",
                (self._now(), self.run_id, self.run, key),
            )

        await self._tx(apply)
