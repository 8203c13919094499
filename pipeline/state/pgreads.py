"""The synchronous reads of the PostgreSQL state, on one plain psycopg connection.

Why synchronous: the ``StateStore`` protocol's reads are (SQLite answers them in microseconds and
the engine asks them mid-bookkeeping). On a loopback or LAN database one read is a fraction of a
millisecond; a read that sees a unit and its outputs runs in one REPEATABLE READ transaction so
both come from the same commit. Every read sees committed changes only (the mutators commit before
they return, so a worker reads its own writes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence, Set
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import IsolationLevel

from pipeline.errors import NoStateYetError, StateError
from pipeline.state.pgconn import connect_kwargs, map_error, redact_url
from pipeline.state.pgreview import PgReviewReads
from pipeline.state.records import PHASES, EventRecord, OutputRecord, Phase, UnitRecord
from pipeline.state.store import SharedState

__all__ = ["PgReads", "open_pg_view"]

_UNIT_COLS = (
    "key, item_id, step, idx, upstream, request_json, expected_outputs, phase, job_id, attempts,"
    " submitted_at, finished_at, last_error, error_kind, updated_at, run_id, holder,"
    " to_char(lease_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
)
_OUTPUT_COLS = "unit_key, n, asset_id, url, path, bytes, sha256, downloaded_at"


class PgReads(PgReviewReads):
    """Reads of one run (``run``) of a shared database; also the read-only view ``status`` uses."""

    def __init__(self, url: str, run: str, reader: psycopg.Connection[Any]) -> None:
        self._url = url
        self.run = run
        self._reader = reader

    @property
    def shared(self) -> SharedState:
        """Where this state is, for the gallery and ``export`` (its repr hides the password)."""
        return SharedState(self._url, self.run)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self._url)!r}, run={self.run!r})"

    @contextmanager
    def _snapshot(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        if self._reader.closed:
            raise StateError(f"state database {redact_url(self._url)}: the store is closed")
        try:
            with self._reader.transaction():
                yield self._reader
        except psycopg.Error as exc:
            raise map_error(self._url, exc, doing) from exc

    def _records(
        self, conn: psycopg.Connection[Any], where: str, params: Sequence[object]
    ) -> list[UnitRecord]:
        rows = conn.execute(
            f"SELECT {_UNIT_COLS} FROM units WHERE run = %s {where} ORDER BY item_id, step, idx",  # noqa: S608
            (self.run, *params),
        ).fetchall()
        outs: dict[str, list[OutputRecord]] = {}
        if rows:
            out_sql = (
                f"SELECT {_OUTPUT_COLS} FROM outputs WHERE run = %s AND unit_key IN"  # noqa: S608
                f" (SELECT key FROM units WHERE run = %s {where}) ORDER BY unit_key, n"
            )
            for out in conn.execute(out_sql, (self.run, self.run, *params)):
                outs.setdefault(out[0], []).append(OutputRecord(*out))
        make: Any = UnitRecord
        return [
            make(*r[:7], PHASES[r[7]], *r[8:16], outputs=tuple(outs.get(r[0], ())), holder=r[16],
                 lease_until=r[17])
            for r in rows
        ]  # fmt: skip

    def get(self, key: str) -> UnitRecord | None:
        """The unit with this key, with its outputs, or ``None``."""
        with self._snapshot("reading a unit") as conn:
            found = self._records(conn, "AND key = %s", (key,))
        return found[0] if found else None

    def phases(self) -> dict[str, Phase]:
        """Every unit's phase by key."""
        with self._snapshot("reading phases") as conn:
            rows = conn.execute("SELECT key, phase FROM units WHERE run = %s", (self.run,))
            return {key: PHASES[phase] for key, phase in rows}

    def iter_phases(self) -> Iterator[tuple[str, Phase]]:
        """Every unit's key and phase (one snapshot; a shared run's units fit in memory)."""
        yield from self.phases().items()

    def iter_outputs(self) -> Iterator[tuple[str, int, str | None, int | None]]:
        """``(unit_key, n, path, bytes)`` of every recorded output of this run."""
        with self._snapshot("reading outputs") as conn:
            sql = "SELECT unit_key, n, path, bytes FROM outputs WHERE run = %s"
            rows = conn.execute(sql, (self.run,)).fetchall()
        yield from ((k, int(n), p, s) for k, n, p, s in rows)

    def counts(self) -> dict[Phase, int]:
        """How many units are in each phase (every phase present, zeros included)."""
        counts = dict.fromkeys(Phase, 0)
        with self._snapshot("counting units") as conn:
            sql = "SELECT phase, count(*) FROM units WHERE run = %s GROUP BY phase"
            for phase, count in conn.execute(sql, (self.run,)):
                counts[PHASES[phase]] = int(count)
        return counts

    def job_ids(self) -> set[str]:
        """Every job id of this run."""
        with self._snapshot("reading job ids") as conn:
            sql = "SELECT job_id FROM units WHERE run = %s AND job_id IS NOT NULL"
            return {j for (j,) in conn.execute(sql, (self.run,))}

    def done_outputs(self) -> dict[str, list[tuple[int, str | None, int | None]]]:
        """``(n, path, bytes)`` of every output of every done unit."""
        found: dict[str, list[tuple[int, str | None, int | None]]] = {}
        sql = (
            "SELECT o.unit_key, o.n, o.path, o.bytes FROM outputs o JOIN units u"
            " ON u.run = o.run AND u.key = o.unit_key WHERE o.run = %s AND u.phase = 'done'"
            " ORDER BY o.unit_key, o.n"
        )
        with self._snapshot("reading outputs") as conn:
            for key, n, path, size in conn.execute(sql, (self.run,)):
                found.setdefault(key, []).append((n, path, size))
        return found

    def resource(self, kind: str, key: str) -> dict[str, Any] | None:
        """What was recorded for a shared resource of this run."""
        with self._snapshot("reading a resource") as conn:
            row = conn.execute(
                "SELECT value_json FROM resources WHERE run = %s AND kind = %s AND key = %s",
                (self.run, kind, key),
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def units(self, phase: Phase | None = None) -> list[UnitRecord]:
        """All units (or those in ``phase``) ordered by item, step and index."""
        with self._snapshot("listing units") as conn:
            if phase is None:
                return self._records(conn, "", ())
            return self._records(conn, "AND phase = %s", (Phase(phase).value,))

    def stale_keys(self, current_keys: Set[str]) -> list[UnitRecord]:
        """Units stored that the manifest no longer has: reported, never deleted."""
        with self._snapshot("finding stale units") as conn:
            keys = [k for (k,) in conn.execute("SELECT key FROM units WHERE run = %s", (self.run,))]
            stale = [k for k in keys if k not in current_keys]
            return self._records(conn, "AND key = ANY(%s)", (stale,)) if stale else []

    def history(self, key: str) -> list[EventRecord]:
        """A unit's phase changes, oldest first."""
        with self._snapshot("reading history") as conn:
            rows = conn.execute(
                "SELECT unit_key, at, phase, detail FROM events WHERE run = %s AND unit_key = %s ORDER BY id",
                (self.run, key),
            )
            return [EventRecord(k, at, PHASES[p], d) for k, at, p, d in rows]

    def holders(self) -> list[tuple[str, int, str | None]]:
        """Who holds what: ``(holder, units held under a live lease, last seen)`` per worker of the run."""
        sql = (
            "SELECT w.holder, count(u.key) FILTER (WHERE u.lease_until > clock_timestamp()),"
            " to_char(max(w.seen_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
            " FROM workers w LEFT JOIN units u ON u.run = w.run AND u.holder = w.holder"
            " WHERE w.run = %s GROUP BY w.holder ORDER BY w.holder"
        )
        with self._snapshot("reading workers") as conn:
            return [(h, int(n), seen) for h, n, seen in conn.execute(sql, (self.run,))]

    def close(self) -> None:
        """Close the read connection."""
        self._reader.close()

    def __enter__(self) -> PgReads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect_reader(url: str) -> psycopg.Connection[Any]:
    """The read connection: autocommit, REPEATABLE READ for the multi-statement reads."""
    try:
        conn = psycopg.connect(url, autocommit=True, **connect_kwargs(url))  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise map_error(url, exc, "connecting") from exc
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    return conn


def open_pg_view(url: str, run: str) -> PgReads:
    """A read-only view of one run (for ``status``): connects, checks the schema, writes nothing."""
    from pipeline.state.pgconn import SCHEMA, SCHEMA_VERSION

    conn = connect_reader(url)
    try:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_version",)).fetchone()
        if not row or not row[0]:
            raise NoStateYetError(f"state database {redact_url(url)}: no photogpt-pipeline state in it yet")
        found = conn.execute(f"SELECT max(version) FROM {SCHEMA}.schema_version").fetchone()  # noqa: S608
        version = int(found[0]) if found and found[0] is not None else 0
        if version > SCHEMA_VERSION:
            from pipeline.errors import StateUnavailableError

            raise StateUnavailableError(
                f"state database {redact_url(url)} has schema version {version}, but this "
                f"photogpt-pipeline only knows version {SCHEMA_VERSION}: upgrade photogpt-pipeline"
            )
    except BaseException:
        conn.close()
        raise
    view = PgReads(url, run, conn)
    view._review_tables = version >= 2  # 0002_review.sql: a view migrates nothing
    return view
