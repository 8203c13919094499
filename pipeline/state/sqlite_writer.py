"""Writing a state file: one writer connection, group commit, and the lingering of cheap changes.

The money rule (reliability-plan §3.2): the intent (``submitting``) is on disk before a POST leaves
and the job id is on disk before we act on it, so every change returns only after the transaction
holding it committed with a full fsync.

One writer connection, used by one thread at a time: commits run on the store's own
:class:`~pipeline.lane.Lane` (a cheaper hop than ``anyio.to_thread``), so the event loop never
waits on fsync. Group commit: a mutator queues its
change and waits for the write lock; whoever holds it commits the whole queue in one ``BEGIN
IMMEDIATE`` transaction (200 concurrent calls cost a few fsyncs, not 200). Each change runs in a
savepoint, so a refused change never sinks its batch.

Lingering: the changes whose loss in a crash costs only a repeat of free work (``mark_succeeded``:
a rerun polls the recorded job again; ``record_download`` and ``mark_done``: a rerun finds the
published file and its sidecar and adopts it) do not start a commit of their own. They wait up to
``linger_s`` (default 30 ms) for one to carry them: an urgent change's (intent, job id, failure…),
``flush()``'s, or the one the first of them starts when its time is up, so a handful share one
fsync. They still return only once committed (and so durable), which keeps read-your-writes
simple: reads go through the read-only connection, which sees committed transactions only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Set
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio

from pipeline.clock import Clock
from pipeline.errors import StateError
from pipeline.lane import Lane
from pipeline.state.records import PHASES, Phase, rfc3339
from pipeline.state.sqlite_schema import advice

__all__ = ["FORGET", "LINGER_S", "Writer", "expect"]

_DETAIL_MAX = 300  # event details are a hint, not a log: the history must stay small
_QUIET = frozenset({"succeeded", "done"})  # no event: the row keeps all they say, and nothing overwrites it
LINGER_S = 0.03  # the longest a change that may wait waits for a commit to carry it
_BATCH_MAX = 64  # lingering changes queued: commit now, do not wait for more
#: The ``tail`` of a transition back to pending that forgets the job and its outcome.
FORGET = ", job_id = NULL, submitted_at = NULL, finished_at = NULL, last_error = NULL, error_kind = NULL"

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class _Change:
    apply: Callable[[sqlite3.Connection], object]
    done: bool = False
    result: object = None
    error: StateError | None = None


class Writer:
    """The writing half of :class:`~pipeline.state.sqlite.SqliteStore`: the queue of changes, their
    group commit on the writer connection, and the phase transition every mutator makes."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        *,
        clock: Clock,
        run_id: str,
        limiter: anyio.CapacityLimiter,
        linger_s: float,
    ) -> None:
        self._path = path
        self._writer = writer
        self._clock = clock
        self.run_id = run_id
        self._limiter = limiter
        self._lane = Lane("state-writer")
        self._lock = anyio.Lock()
        self._queue: list[_Change] = []
        self._closed = False
        self._commits = 0
        self._linger_s = max(0.0, linger_s)
        #: Set once the commit that takes the current queue is over; ``None`` until a change lingers.
        self._taken: anyio.Event | None = None

    @property
    def commits(self) -> int:
        """Write transactions committed so far (group commit makes this ≪ the number of changes)."""
        return self._commits

    def _now(self) -> str:
        return rfc3339(self._clock.now())

    def hurry(self) -> None:
        """Stop lingering, from now on: a run's last few units are all that is left. No commit is
        coming to carry their changes, so each wait would only add ``linger_s`` to the run's end
        (three of them for the last unit: succeeded, downloaded, done)."""
        self._linger_s = 0.0
        if self._taken is not None:
            self._taken.set()  # whoever lingers now commits now

    async def flush(self) -> None:
        """Commit anything still queued now, lingering changes included."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await self._commit_queue()

    async def _write(self, apply: Callable[[sqlite3.Connection], T], *, urgent: bool = True) -> T:
        """Queue a change and return once a commit containing it is durable (shielded: once
        called, a change commits or fails definitely; cancellation lands after it returns).

        An urgent change commits the queue as soon as the write lock is free. One that is not
        (``urgent=False``) lingers first: the first of a queue waits up to ``linger_s`` for another
        commit to take it, then commits the queue itself; the others wait for that commit."""
        if self._closed:
            raise StateError(f"state file {self._path}: the store is closed")
        change = _Change(apply)
        self._queue.append(change)
        with anyio.CancelScope(shield=True):
            if not urgent and self._linger_s > 0 and len(self._queue) < _BATCH_MAX:
                taken = self._taken
                if taken is None:  # the first to linger on this queue: it keeps the time
                    self._taken = taken = anyio.Event()
                    await self._clock.wait_for(taken, self._linger_s)
                else:
                    await taken.wait()  # the first one's commit, or an earlier one, takes us too
            if not change.done:
                async with self._lock:
                    if not change.done:
                        await self._commit_queue()
        if change.error is not None:
            raise change.error
        return cast(T, change.result)

    async def _commit_queue(self) -> None:
        """Commit everything queued in one transaction (write lock held), then wake its lingerers."""
        batch, self._queue = self._queue, []
        taken, self._taken = self._taken, None
        try:
            if batch:
                await self._lane.run(self._commit, batch)
        finally:
            for change in batch:
                if not change.done:  # the hand-off itself failed: say so, never report success
                    change.done = True
                    change.error = StateError(f"state file {self._path}: commit interrupted")
            if taken is not None:
                taken.set()

    def _commit(self, batch: list[_Change]) -> None:
        """Apply a batch in one transaction (worker thread). A refused change rolls back to its
        savepoint alone; a failing commit fails every change in the batch."""
        conn, failure = self._writer, None
        try:
            conn.execute("BEGIN IMMEDIATE")
            for change in batch:
                conn.execute("SAVEPOINT change")
                try:
                    change.result = change.apply(conn)
                except sqlite3.Error as exc:
                    if not isinstance(exc, sqlite3.IntegrityError):
                        raise  # I/O, disk full, lock timeout: the whole transaction is gone
                    self._refuse(conn, change, exc)
                except Exception as exc:  # a refused transition, or a request that is not JSON
                    self._refuse(conn, change, exc)
                conn.execute("RELEASE change")
            conn.execute("COMMIT")
            self._commits += 1
        except sqlite3.Error as exc:
            failure = StateError(f"state file {self._path}: commit failed: {exc}; {advice(exc)}")
            failure.__cause__ = exc
        finally:
            with suppress(sqlite3.Error):
                if conn.in_transaction:  # a failed commit, or an interrupt in the middle
                    conn.execute("ROLLBACK")
                    failure = failure or StateError(f"state file {self._path}: commit interrupted")
            for change in batch:
                change.done = True
                change.error = failure or change.error

    def _refuse(self, conn: sqlite3.Connection, change: _Change, exc: Exception) -> None:
        conn.execute("ROLLBACK TO change")
        if isinstance(exc, StateError):
            change.error = exc
        else:
            change.error = StateError(f"state file {self._path}: change refused: {exc}")
            change.error.__cause__ = exc

    def _transition(
        self, conn: sqlite3.Connection, key: str, to: Phase, now: str, detail: str, tail: str = "", *args: Any
    ) -> None:
        """Set the phase (plus ``tail`` columns, fixed SQL text from the store's modules) and log an
        event for what a later change would overwrite: intents, job ids, reasons."""
        conn.execute(
            f"UPDATE units SET phase = ?, updated_at = ?, run_id = ?{tail} WHERE key = ?",  # noqa: S608
            (to.value, now, self.run_id, *args, key),
        )
        if to.value not in _QUIET:
            conn.execute(
                "INSERT INTO events (unit_key, at, phase, detail) VALUES (?, ?, ?, ?)",
                (key, now, to.value, detail[:_DETAIL_MAX]),
            )


def expect(conn: sqlite3.Connection, key: str, action: str, allowed: Set[Phase]) -> Phase:
    """The unit's phase, if ``action`` may start from it (the lifecycle's table); else refused."""
    row = conn.execute("SELECT phase FROM units WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise StateError(f"cannot {action}: no unit with key {key!r} in the state file")
    if (phase := PHASES[row[0]]) not in allowed:
        raise StateError(f"unit {key}: cannot {action} while {phase} (only from {'/'.join(sorted(allowed))})")
    return phase
