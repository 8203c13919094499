"""The resumable state store: one SQLite file that says, for every paid unit, how far it got.

Why SQLite, WAL and ``synchronous=FULL``: reliability-plan §1. The money rule (§3.2): the intent
(``submitting``) is on disk before a POST leaves and the job id is on disk before we act on it, so
every mutator returns only after the transaction holding its change committed with a full fsync.

The store is its mutators; the rest is beside it: opening, checking and migrating the file in
sqlite_schema.py, group commit and the lingering of cheap changes in sqlite_writer.py, the reads
(shared with the read-only view ``status`` uses) in sqlite_reads.py, the review's records, reads
and writes in review.py. The names callers use are all importable from here.

Phases and the transitions each mutator may make come from :mod:`pipeline.state.lifecycle`: a
write that the table forbids is refused with a :class:`~pipeline.errors.StateError`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Generator, Iterable, Mapping, Sequence, Set
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.to_thread

from pipeline.clock import Clock
from pipeline.errors import StateError
from pipeline.state.marks import SimpleMarks
from pipeline.state.records import (
    CAN_FINISH,
    CAN_RECORD_JOB,
    CAN_REOPEN,
    CAN_SUBMIT,
    CAN_SUCCEED,
    EventRecord,
    OutputRecord,
    Phase,
    UnitLike,
    UnitRecord,
    rfc3339,
)
from pipeline.state.review import DecisionRecord, RetiredRecord, ReviewWrites
from pipeline.state.sqlite_prints import write_prints
from pipeline.state.sqlite_reads import Reads, StateView, open_readonly
from pipeline.state.sqlite_schema import SCHEMA_VERSION, mapped, open_writer
from pipeline.state.sqlite_writer import FORGET, LINGER_S, Writer, expect

__all__ = [
    "SCHEMA_VERSION",
    "DecisionRecord",
    "EventRecord",
    "OutputRecord",
    "Phase",
    "RetiredRecord",
    "SqliteStore",
    "StateStore",
    "StateView",
    "UnitLike",
    "UnitRecord",
    "open_readonly",
]


class SqliteStore(SimpleMarks, Reads, ReviewWrites):
    """The one writer of a state file. Mutators are async and durable on return; reads are sync.

    Durable on return holds for every mutator; ``mark_succeeded``, ``record_download`` and
    ``mark_done`` may take up to ``linger_s`` longer to return, so that they share commits.

    Open with ``async with StateStore.open(path, clock=clock) as store:`` (or ``await`` it and
    ``await store.aclose()``). Hold a :class:`~pipeline.state.lock.RunLock` first: one run per file.
    """

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        *,
        clock: Clock,
        run_id: str,
        limiter: anyio.CapacityLimiter,
        linger_s: float = LINGER_S,
    ) -> None:
        Writer.__init__(self, path, writer, clock=clock, run_id=run_id, limiter=limiter, linger_s=linger_s)
        self._reader = reader

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Clock,
        run_id: str | None = None,
        app_version: str | None = None,
        linger_s: float = LINGER_S,
    ) -> _Opening:
        """Open (creating if missing) a state file: awaitable, or an async context manager that closes it.

        ``linger_s``: how long a change that may wait (see sqlite_writer.py) waits for a commit
        to share; 0 commits each at once, as urgent changes always are.
        """
        return _Opening(Path(path), clock, run_id or uuid.uuid4().hex[:12], app_version, linger_s)

    @property
    def path(self) -> Path:
        """The state file."""
        return self._path

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit anything queued, then close both connections (SQLite checkpoints the WAL)."""
        if self._closed:
            return
        self._closed = True
        await self.flush()
        with anyio.CancelScope(shield=True), mapped(self._path, "closing"):
            self._reader.close()  # here, on the thread that reads: never closed under a running read
            async with self._lock:
                await self._lane.run(self._writer.close)
                self._lane.close()

    # ---- mutators -------------------------------------------------------------------------

    async def sync_units(self, units: Iterable[UnitLike]) -> int:
        """Insert new units as pending; existing rows and their paid history stay untouched. Returns count."""
        items, now = list(units), self._now()

        def apply(conn: sqlite3.Connection) -> int:
            rows = [
                (u.key, u.item_id, u.step, int(u.index), u.upstream, json.dumps(u.request, allow_nan=False),
                 int(u.expected_outputs), Phase.PENDING.value, now)
                for u in items
            ]  # fmt: skip
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO units (key, item_id, step, idx, upstream, request_json,"
                " expected_outputs, phase, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return conn.total_changes - before

        return await self._write(apply)

    async def mark_submitting(self, key: str) -> int:
        """Record the intent to POST, durable on return: call it before sending. Returns attempts so far."""
        now = self._now()

        def apply(conn: sqlite3.Connection) -> int:
            expect(conn, key, "mark submitting", CAN_SUBMIT)
            self._transition(conn, key, Phase.SUBMITTING, now, "intent", ", attempts = attempts + 1")
            return int(conn.execute("SELECT attempts FROM units WHERE key = ?", (key,)).fetchone()[0])

        return await self._write(apply)

    async def mark_submitted(self, key: str, job_id: str, at: datetime | None = None) -> None:
        """Record the job id (durable on return). The same id again is a no-op; another id is refused."""
        now, when = self._now(), rfc3339(at or self._clock.now())

        def apply(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT phase, job_id FROM units WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] == Phase.SUBMITTED and row[1] == job_id:
                return
            expect(conn, key, "record a job id", CAN_RECORD_JOB)
            other = conn.execute("SELECT key FROM units WHERE job_id = ? AND key <> ?", (job_id, key))
            if (owner := other.fetchone()) is not None:
                raise StateError(f"job {job_id} already belongs to unit {owner[0]}, not to {key}")
            self._transition(
                conn, key, Phase.SUBMITTED, now, f"job {job_id}",
                ", job_id = ?, submitted_at = ?, last_error = NULL, error_kind = NULL", job_id, when,
            )  # fmt: skip

        await self._write(apply)

    async def mark_succeeded(self, key: str, outputs: Sequence[tuple[str, str]]) -> None:
        """The job finished: record its outputs as (asset_id, url), numbered from 1; downloads follow.

        Lingers (see sqlite_writer.py): lost in a crash, the unit is still ``submitted`` with
        its job id, and the next run polls that job again for free."""
        now, outs = self._now(), [(str(a), str(u)) for a, u in outputs]
        if not outs:
            raise StateError(f"unit {key}: a success needs at least one output (mark it failed instead)")

        def apply(conn: sqlite3.Connection) -> None:
            expect(conn, key, "mark succeeded", CAN_SUCCEED)
            conn.execute("DELETE FROM outputs WHERE unit_key = ?", (key,))
            conn.executemany(
                "INSERT INTO outputs (unit_key, n, asset_id, url) VALUES (?, ?, ?, ?)",
                [(key, n, a, u) for n, (a, u) in enumerate(outs, 1)],
            )
            self._transition(conn, key, Phase.SUCCEEDED, now, f"{len(outs)} outputs", ", finished_at=?", now)

        await self._write(apply, urgent=False)

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
        """Record that output ``n`` is on disk and verified (after the file's rename was fsynced);
        ``done``: close the unit in the same change (one commit for the last output, not two).

        Lingers: lost in a crash, the next run finds the published file with its sidecar and
        adopts it (``Delivery._adopt_published``) without downloading or paying again."""
        now, when = self._now(), rfc3339(at or self._clock.now())

        def apply(conn: sqlite3.Connection) -> None:
            expect(conn, key, "record a download", {Phase.SUCCEEDED})
            cur = conn.execute(
                "UPDATE outputs SET path = ?, bytes = ?, sha256 = ?, downloaded_at = ?"
                " WHERE unit_key = ? AND n = ?",
                (path, int(bytes), sha256, when, key, int(n)),
            )
            if cur.rowcount != 1:
                raise StateError(f"unit {key} has no output {n}")
            conn.execute("UPDATE units SET updated_at = ?, run_id = ? WHERE key = ?", (now, self.run_id, key))
            if done:
                self._close(conn, key, now)

        await self._write(apply, urgent=False)

    async def mark_done(self, key: str) -> None:
        """Close the unit: refused while any recorded output is not downloaded.

        Lingers: lost in a crash, the unit stays ``succeeded``; the next run finds its outputs
        recorded (or adopts the published files, if their records were lost too) and closes it
        without a request."""
        now = self._now()
        await self._write(lambda conn: self._close(conn, key, now), urgent=False)

    def _close(self, conn: sqlite3.Connection, key: str, now: str) -> None:
        expect(conn, key, "mark done", CAN_FINISH)
        sql = "SELECT n FROM outputs WHERE unit_key = ? AND downloaded_at IS NULL ORDER BY n"
        missing = [n for (n,) in conn.execute(sql, (key,))]
        if missing:
            raise StateError(f"unit {key}: outputs {missing} are not downloaded yet")
        self._transition(conn, key, Phase.DONE, now, "done")

    async def put_resource(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Record a shared resource durably (an upload's id and URL, a model's id and training state)."""
        now = self._now()
        text = json.dumps(dict(value), sort_keys=True)

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO resources (kind, key, value_json, updated_at) VALUES (?, ?, ?, ?)",
                (kind, key, text, now),
            )

        await self._write(apply)

    async def record_prints(self, prints: Sequence[tuple[bytes, tuple[str, ...]]]) -> None:
        """Index each expanded row's fingerprint with its units' keys (:mod:`.sqlite_prints`)."""
        if prints:
            await self._write(lambda conn: write_prints(conn, prints))

    async def reopen(self, key: str, missing: Iterable[int]) -> None:
        """A done unit whose files are gone: back to succeeded with those outputs to fetch again.

        The job and its outputs are kept, so the files come back without paying again.
        """
        now = self._now()
        numbers = sorted(set(missing))

        def apply(conn: sqlite3.Connection) -> None:
            expect(conn, key, "reopen", CAN_REOPEN)
            conn.executemany(
                "UPDATE outputs SET path = NULL, bytes = NULL, sha256 = NULL, downloaded_at = NULL"
                " WHERE unit_key = ? AND n = ?",
                [(key, n) for n in numbers],
            )
            self._transition(conn, key, Phase.SUCCEEDED, now, f"outputs {numbers} missing on disk")

        await self._write(apply)

    async def _simple(self, key: str, to: Phase, allowed: Set[Phase], reason: str, kind: str | None) -> None:
        now = self._now()
        tail = ", last_error = ?, error_kind = ?" + (", finished_at = ?" if to is Phase.FAILED else "")
        args = (reason, kind, now) if to is Phase.FAILED else (reason, kind)

        def apply(conn: sqlite3.Connection) -> None:
            expect(conn, key, f"mark {to}", allowed)
            self._transition(conn, key, to, now, reason, tail, *args)

        await self._write(apply)

    async def update_urls(self, key: str, outputs: Sequence[tuple[str, str]]) -> None:
        """Replace expired URLs with fresh ones from a new job read; asset ids must match."""
        now, outs = self._now(), [(str(a), str(u)) for a, u in outputs]

        def apply(conn: sqlite3.Connection) -> None:
            expect(conn, key, "update URLs", {Phase.SUCCEEDED})
            sql = "SELECT asset_id FROM outputs WHERE unit_key = ? ORDER BY n"
            have, fresh = [a for (a,) in conn.execute(sql, (key,))], [a for a, _ in outs]
            if have != fresh:
                raise StateError(f"unit {key}: fresh outputs {fresh} do not match the recorded {have}")
            conn.executemany(
                "UPDATE outputs SET url = ? WHERE unit_key = ? AND n = ?",
                [(u, key, n) for n, (_, u) in enumerate(outs, 1)],
            )
            conn.execute("UPDATE units SET updated_at = ?, run_id = ? WHERE key = ?", (now, self.run_id, key))

        await self._write(apply)

    async def reset(self, phase: Phase, keys: Iterable[str] | None = None) -> int:
        """``--retry-failed`` / ``--resubmit-unknown``: units in ``phase`` (all, or only ``keys``) go back
        to pending, forgetting job id and outputs but keeping attempts. Returns how many."""
        if phase not in (Phase.FAILED, Phase.UNKNOWN):
            raise StateError(f"reset works on failed or unknown units, not {phase}")
        now, wanted = self._now(), None if keys is None else set(keys)

        def apply(conn: sqlite3.Connection) -> int:
            rows = conn.execute("SELECT key, last_error FROM units WHERE phase = ?", (phase.value,))
            chosen = [(k, err) for k, err in rows.fetchall() if wanted is None or k in wanted]
            for k, err in chosen:
                conn.execute("DELETE FROM outputs WHERE unit_key = ?", (k,))
                self._transition(conn, k, Phase.PENDING, now, f"reset from {phase}: {err or ''}", FORGET)
            return len(chosen)

        return await self._write(apply)


class _Opening:
    """What ``SqliteStore.open`` returns: ``await`` it, or use it as ``async with``."""

    def __init__(
        self, path: Path, clock: Clock, run_id: str, app_version: str | None, linger_s: float
    ) -> None:
        self._args = (path, clock, run_id, app_version, linger_s)
        self._store: SqliteStore | None = None

    async def _open(self) -> SqliteStore:
        path, clock, run_id, app_version, linger_s = self._args
        limiter = anyio.CapacityLimiter(1)
        writer, reader = await anyio.to_thread.run_sync(
            open_writer, path, rfc3339(clock.now()), app_version, limiter=limiter
        )
        return SqliteStore(
            path, writer, reader, clock=clock, run_id=run_id, limiter=limiter, linger_s=linger_s
        )

    def __await__(self) -> Generator[Any, None, SqliteStore]:
        return self._open().__await__()

    async def __aenter__(self) -> SqliteStore:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, *exc_info: object) -> None:
        if self._store is not None:
            await self._store.aclose()


#: The name callers used before the ``StateStore`` protocol (pipeline/state/store.py) existed.
StateStore = SqliteStore
