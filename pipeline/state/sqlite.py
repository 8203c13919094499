"""The resumable state store: one SQLite file that says, for every paid unit, how far it got.

Why SQLite, WAL and ``synchronous=FULL``: reliability-plan §1. The money rule (§3.2): the intent
(``submitting``) is on disk before a POST leaves and the job id is on disk before we act on it, so
every mutator returns only after the transaction holding its change committed with a full fsync.

One writer connection, used by one worker thread at a time (``anyio.to_thread`` behind a
``CapacityLimiter(1)``), so the event loop never waits on fsync. Group commit: a mutator queues its
change and waits for the write lock; whoever holds it commits the whole queue in one ``BEGIN
IMMEDIATE`` transaction (200 concurrent calls cost a few fsyncs, not 200). Each change runs in a
savepoint, so a refused change never sinks its batch. Reads use a second, read-only connection.

Lingering: the changes whose loss in a crash costs only a repeat of free work (``mark_succeeded``:
a rerun polls the recorded job again; ``record_download`` and ``mark_done``: a rerun finds the
published file and its sidecar and adopts it) do not start a commit of their own. They wait up to
``linger_s`` (default 30 ms) for one to carry them: an urgent change's (intent, job id, failure…),
``flush()``'s, or the one the first of them starts when its time is up, so a handful share one
fsync. They still return only once committed (and so durable), which keeps read-your-writes
simple: reads go through the read-only connection, which sees committed transactions only.

Phases and the transitions each mutator may make come from :mod:`pipeline.state.lifecycle`: a
write that the table forbids is refused with a :class:`~pipeline.errors.StateError`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar, cast
from urllib.request import pathname2url

import anyio
import anyio.to_thread

import pipeline
from pipeline.clock import Clock
from pipeline.errors import StateError
from pipeline.state.records import (
    CAN_FAIL,
    CAN_FINISH,
    CAN_PARK,
    CAN_RECORD_JOB,
    CAN_REGENERATE,
    CAN_REOPEN,
    CAN_SUBMIT,
    CAN_SUCCEED,
    CAN_UNSEND,
    PHASES,
    EventRecord,
    OutputRecord,
    Phase,
    UnitLike,
    UnitRecord,
    rfc3339,
)

__all__ = [
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

#: Bump with a migration in ``_MIGRATIONS`` whenever the schema changes. (Not in ``__all__``: ruff's
#: isort-style order and the plain ``sorted`` of tests/test_exports.py disagree about constants.)
SCHEMA_VERSION = 2
_BUSY_TIMEOUT_S = 5.0
_DETAIL_MAX = 300  # event details are a hint, not a log: the history must stay small
_QUIET = frozenset({"succeeded", "done"})  # no event: the row keeps all they say, and nothing overwrites it
_LINGER_S = 0.03  # the longest a change that may wait waits for a commit to carry it
_BATCH_MAX = 64  # lingering changes queued: commit now, do not wait for more
_CHUNK = 10_000  # rows fetched at a time by the streaming reads

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A reviewer's verdict on one asset, keyed by its sha256 (so a regenerated file starts fresh)."""

    sha256: str
    verdict: str  #: ``approve`` or ``reject`` (``undo`` rows are history, never returned as current)
    note: str | None
    path: str | None  #: where the file was when judged (a hint for people; the key is the hash)
    item_id: str | None
    at: str


@dataclass(frozen=True, slots=True)
class RetiredRecord:
    """An output set aside by ``--regenerate-rejected``: ``phase`` is ``rejected`` (judged so) or
    ``superseded`` (a chain child, or a sibling output, of a rejected one)."""

    unit_key: str
    n: int
    phase: str
    path: str | None  #: where it now lives (under ``.rejected/``), or ``None`` if it was not on disk
    sha256: str | None
    job_id: str | None
    at: str


#: Verdicts a decision row may hold; ``undo`` clears the current verdict and keeps the history.
VERDICTS = frozenset({"approve", "reject", "undo"})


#: Schema 2: review decisions (append-only; the newest row per sha256 is the verdict) and the
#: outputs ``--regenerate-rejected`` set aside.
_V2 = (
    """CREATE TABLE decisions (
        id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'reject', 'undo')),
        note TEXT, path TEXT, item_id TEXT, at TEXT NOT NULL)""",
    "CREATE INDEX decisions_sha ON decisions (sha256, id)",
    """CREATE TABLE retired (
        id INTEGER PRIMARY KEY, unit_key TEXT NOT NULL, n INTEGER NOT NULL,
        phase TEXT NOT NULL CHECK (phase IN ('rejected', 'superseded')),
        path TEXT, sha256 TEXT, job_id TEXT, at TEXT NOT NULL)""",
)
_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE units (
        key TEXT PRIMARY KEY, item_id TEXT NOT NULL, step TEXT NOT NULL,
        idx INTEGER NOT NULL CHECK (idx >= 1), upstream TEXT, request_json TEXT NOT NULL,
        expected_outputs INTEGER NOT NULL CHECK (expected_outputs >= 0),
        phase TEXT NOT NULL CHECK (phase IN ({", ".join(f"'{p}'" for p in Phase)})),
        job_id TEXT, attempts INTEGER NOT NULL DEFAULT 0, submitted_at TEXT, finished_at TEXT,
        last_error TEXT, error_kind TEXT, updated_at TEXT NOT NULL, run_id TEXT)""",
    "CREATE INDEX units_phase ON units (phase)",
    "CREATE INDEX units_order ON units (item_id, step, idx)",
    "CREATE INDEX units_job ON units (job_id) WHERE job_id IS NOT NULL",
    """CREATE TABLE outputs (
        unit_key TEXT NOT NULL REFERENCES units (key), n INTEGER NOT NULL CHECK (n >= 1),
        asset_id TEXT NOT NULL, url TEXT NOT NULL, path TEXT, bytes INTEGER, sha256 TEXT,
        downloaded_at TEXT, PRIMARY KEY (unit_key, n)) WITHOUT ROWID""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY, unit_key TEXT NOT NULL REFERENCES units (key), at TEXT NOT NULL,
        phase TEXT NOT NULL, detail TEXT NOT NULL)""",
    "CREATE INDEX events_unit ON events (unit_key)",
    """CREATE TABLE resources (
        kind TEXT NOT NULL, key TEXT NOT NULL, value_json TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (kind, key)) WITHOUT ROWID""",
    *_V2,
)
#: ``version -> statements`` taking a file from ``version`` to ``version + 1``.
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V2}

_UNIT_COLS = (
    "key, item_id, step, idx, upstream, request_json, expected_outputs, phase, job_id, attempts,"
    " submitted_at, finished_at, last_error, error_kind, updated_at, run_id"
)
_OUTPUT_COLS = "unit_key, n, asset_id, url, path, bytes, sha256, downloaded_at"
_FORGET = ", job_id = NULL, submitted_at = NULL, finished_at = NULL, last_error = NULL, error_kind = NULL"


def _advice(exc: BaseException) -> str:
    text = str(exc).lower()
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return (
            "the file is damaged or not a state file: move it aside and keep it (it records which jobs "
            "were paid for); starting without it would submit everything again"
        )
    if "locked" in text or "busy" in text:
        return "another process is writing it: wait for that run to end"
    if "readonly" in text or "permission" in text or "unable to open" in text:
        return "check that the file and its directory exist and are writable by this user"
    return "check free disk space and the file system (SQLite needs a local disk, not NFS)"


@contextmanager
def _mapped(path: Path, doing: str) -> Iterator[None]:
    """Turn sqlite3/OS errors into a StateError that names the file and says what to do."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise StateError(f"state file {path}: {doing} failed: {exc}; {_advice(exc)}") from exc


def _refuse_symlinks(path: Path) -> None:
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if candidate.is_symlink():
            raise StateError(f"state file {candidate} is a symlink; not following it (use the real path)")


def _connect(path: Path, *, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
    query = "mode=ro" + ("&immutable=1" if immutable else "") if readonly else "mode=rw"
    uri = f"file:{pathname2url(str(path.absolute()))}?{query}"
    return sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
    )


def _check_version(conn: sqlite3.Connection, path: Path, *, exact: bool) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state file {path} has schema version {version}, but this photogpt-pipeline only knows "
            f"version {SCHEMA_VERSION}: upgrade photogpt-pipeline (the file was left untouched)"
        )
    if exact and version != SCHEMA_VERSION:
        raise StateError(
            f"state file {path} has schema version {version}, expected {SCHEMA_VERSION}: "
            "start a run on it once to migrate it"
        )
    return version


def _open_writer(
    path: Path, now: str, app_version: str | None
) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Create or open the file (0600 in a 0700 directory), check it, migrate it; runs in a thread."""
    _refuse_symlinks(path)
    with _mapped(path, "opening"):
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
            path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
        with suppress(FileExistsError):
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(path, flags, 0o600))
        if not stat.S_ISREG(path.lstat().st_mode):
            raise StateError(f"state file {path} is not a regular file")
        conn = _connect(path, readonly=False)
    try:
        with _mapped(path, "checking"):
            result = list(dict.fromkeys(row[0] for row in conn.execute("PRAGMA quick_check")))
            if result != ["ok"]:
                raise StateError(
                    f"state file {path} failed its integrity check ({'; '.join(result[:3])}); "
                    f"{_advice(sqlite3.DatabaseError('malformed'))}"
                )
            version = _check_version(conn, path, exact=False)
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise StateError(f"state file {path}: SQLite cannot use WAL here; put it on a local disk")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            if version < SCHEMA_VERSION:
                _migrate(conn, path, version, now, app_version)
            for side in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                if side.exists() and side.stat().st_mode & 0o077:
                    side.chmod(0o600)
            reader = _connect(path, readonly=True)
        return conn, reader
    except BaseException:
        conn.close()
        raise


def _migrate(conn: sqlite3.Connection, path: Path, version: int, now: str, app_version: str | None) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])  # re-read under the lock
        if version == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StateError(f"{path} is an SQLite file but not a pipeline state file; not touching it")
            statements: Sequence[str] = _SCHEMA
        else:
            statements = [s for v in range(version, SCHEMA_VERSION) for s in _MIGRATIONS[v]]
        for statement in statements:
            conn.execute(statement)
        meta = {"schema_version": str(SCHEMA_VERSION), "app_version": app_version or pipeline.__version__}
        if version == 0:
            meta["created_at"] = now
        conn.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", meta.items())
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class _Reads:
    """The pure, synchronous reads shared by the store and the read-only view."""

    _path: Path
    _reader: sqlite3.Connection

    @contextmanager
    def _snapshot(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One read transaction, so a unit and its outputs come from the same commit."""
        with _mapped(self._path, doing):
            self._reader.execute("BEGIN")
            try:
                yield self._reader
            finally:
                self._reader.execute("COMMIT")

    def _records(self, conn: sqlite3.Connection, where: str, params: Sequence[object]) -> list[UnitRecord]:
        rows = conn.execute(
            f"SELECT {_UNIT_COLS} FROM units {where} ORDER BY item_id, step, idx",  # noqa: S608 - fixed text
            params,
        ).fetchall()
        outs: dict[str, list[OutputRecord]] = {}
        if rows:
            out_sql = (
                f"SELECT {_OUTPUT_COLS} FROM outputs WHERE unit_key IN (SELECT key FROM units {where})"  # noqa: S608
                " ORDER BY unit_key, n"
            )
            for out in conn.execute(out_sql, params):
                outs.setdefault(out[0], []).append(OutputRecord(*out))
        make: Any = UnitRecord  # the row's columns are the record's fields, in order
        return [make(*r[:7], PHASES[r[7]], *r[8:], outputs=tuple(outs.get(r[0], ()))) for r in rows]

    def get(self, key: str) -> UnitRecord | None:
        """The unit with this key, with its outputs, or ``None``."""
        with self._snapshot("reading a unit") as conn:
            found = self._records(conn, "WHERE key = ?", (key,))
        return found[0] if found else None

    def phases(self) -> dict[str, Phase]:
        """Every unit's phase by key: what the scheduler needs to plan a resume."""
        with _mapped(self._path, "reading phases"):
            return {key: PHASES[phase] for key, phase in self._reader.execute("SELECT key, phase FROM units")}

    def iter_phases(self) -> Iterator[tuple[str, Phase]]:
        """Every unit's key and phase, in chunks from one snapshot: a resume of a million-unit state
        without a million-entry dict. Consume it to the end (the snapshot is held until then)."""
        sql = "SELECT key, phase FROM units"
        yield from self._stream("reading phases", sql, lambda row: (row[0], PHASES[row[1]]))

    def iter_outputs(self) -> Iterator[tuple[str, int, str | None, int | None]]:
        """``(unit_key, n, path, bytes)`` of every recorded output, streamed like :meth:`iter_phases`:
        what a resume checks on disk. One scan of the outputs table (the caller knows which units
        are done: a join would cost two index lookups per output)."""
        yield from self._stream("reading outputs", "SELECT unit_key, n, path, bytes FROM outputs", tuple)

    def _stream(self, doing: str, sql: str, make: Callable[[Any], T]) -> Iterator[T]:
        with self._snapshot(doing) as conn:
            cursor = conn.execute(sql)
            while rows := cursor.fetchmany(_CHUNK):
                for row in rows:
                    yield make(row)

    def counts(self) -> dict[Phase, int]:
        """How many units are in each phase (every phase present, zeros included)."""
        counts = dict.fromkeys(Phase, 0)
        with _mapped(self._path, "counting units"):
            for phase, count in self._reader.execute("SELECT phase, count(*) FROM units GROUP BY phase"):
                counts[PHASES[phase]] = count
        return counts

    def job_ids(self) -> set[str]:
        """Every job id the file records: jobs that are ours (reconciliation must not adopt them)."""
        with _mapped(self._path, "reading job ids"):
            return {j for (j,) in self._reader.execute("SELECT job_id FROM units WHERE job_id IS NOT NULL")}

    def done_outputs(self) -> dict[str, list[tuple[int, str | None, int | None]]]:
        """``(n, path, bytes)`` of every output of every done unit: all a no-op resume needs to check."""
        found: dict[str, list[tuple[int, str | None, int | None]]] = {}
        sql = (
            "SELECT o.unit_key, o.n, o.path, o.bytes FROM outputs o JOIN units u ON u.key = o.unit_key"
            " WHERE u.phase = 'done'"
        )
        with _mapped(self._path, "reading outputs"):
            for key, n, path, size in self._reader.execute(sql):
                found.setdefault(key, []).append((n, path, size))
        return found

    def resource(self, kind: str, key: str) -> dict[str, Any] | None:
        """What was recorded for a shared resource (an uploaded file by hash, a trained model)."""
        with _mapped(self._path, "reading a resource"):
            row = self._reader.execute(
                "SELECT value_json FROM resources WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def units(self, phase: Phase | None = None) -> list[UnitRecord]:
        """All units (or those in ``phase``) ordered by item, step and index."""
        with self._snapshot("listing units") as conn:
            if phase is None:
                return self._records(conn, "", ())
            return self._records(conn, "WHERE phase = ?", (Phase(phase).value,))

    def stale_keys(self, current_keys: Set[str]) -> list[UnitRecord]:
        """Units in the file that the manifest no longer has: reported, never deleted (they may be paid)."""
        with self._snapshot("finding stale units") as conn:
            stale = [k for (k,) in conn.execute("SELECT key FROM units") if k not in current_keys]
            if not stale:
                return []
            return self._records(conn, "WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(stale),))

    def history(self, key: str) -> list[EventRecord]:
        """A unit's phase changes, oldest first."""
        with _mapped(self._path, "reading history"):
            rows = self._reader.execute(
                "SELECT unit_key, at, phase, detail FROM events WHERE unit_key = ? ORDER BY id", (key,)
            )
            return [EventRecord(k, at, PHASES[p], d) for k, at, p, d in rows]

    # ---- review (schema 2) ---------------------------------------------------------------

    def decisions(self) -> dict[str, DecisionRecord]:
        """The current verdict per sha256: the newest by time wins (an import may bring older ones;
        equal times: the later row); an ``undo`` leaves none."""
        sql = (
            "SELECT sha256, verdict, note, path, item_id, at FROM decisions d WHERE id = (SELECT id FROM"
            " decisions WHERE sha256 = d.sha256 ORDER BY at DESC, id DESC LIMIT 1) AND verdict <> 'undo'"
        )
        with _mapped(self._path, "reading decisions"):
            return {row[0]: DecisionRecord(*row) for row in self._reader.execute(sql)}

    def retired(self) -> list[RetiredRecord]:
        """Every output set aside by a regeneration, oldest first."""
        sql = "SELECT unit_key, n, phase, path, sha256, job_id, at FROM retired ORDER BY id"
        with _mapped(self._path, "reading retired outputs"):
            return [RetiredRecord(*row) for row in self._reader.execute(sql)]

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every resource of ``kind`` by key (e.g. the seeds regenerations drew, by unit key)."""
        with _mapped(self._path, "reading resources"):
            rows = self._reader.execute("SELECT key, value_json FROM resources WHERE kind = ?", (kind,))
            return {key: dict(json.loads(value)) for key, value in rows}

    def review_counts(self) -> dict[str, int]:
        """Units with a current output judged ``rejected`` / ``approved`` (all judged outputs approved),
        and units ``regenerated`` so far (their older outputs are in ``retired``)."""
        verdicts = {sha: d.verdict for sha, d in self.decisions().items()}
        per_unit: dict[str, set[str]] = {}
        with _mapped(self._path, "counting review verdicts"):
            for key, sha in self._reader.execute(
                "SELECT unit_key, sha256 FROM outputs WHERE sha256 IS NOT NULL"
            ):
                if sha in verdicts:
                    per_unit.setdefault(key, set()).add(verdicts[sha])
            regenerated = self._reader.execute("SELECT count(DISTINCT unit_key) FROM retired").fetchone()[0]
        return {
            "approved": sum(1 for v in per_unit.values() if v == {"approve"}),
            "rejected": sum(1 for v in per_unit.values() if "reject" in v),
            "regenerated": int(regenerated),
        }


class StateView(_Reads):
    """A read-only view for ``status`` while a run goes on: opens nothing for writing, takes no run lock."""

    def __init__(self, path: Path, reader: sqlite3.Connection) -> None:
        self._path = path
        self._reader = reader

    def close(self) -> None:
        """Close the connection."""
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_readonly(path: str | os.PathLike[str]) -> StateView:
    """Open a state file for reading only (``mode=ro``); never creates, migrates or locks it.

    With no ``-wal`` file no writer is running, so the file is read as immutable and SQLite creates
    no ``-wal``/``-shm`` beside it; with a writer running it reads through the WAL like any reader.
    """
    p = Path(path)
    _refuse_symlinks(p)
    if not p.is_file():
        raise StateError(f"no state file at {p}: nothing has run with this state path yet")
    with _mapped(p, "opening read-only"):
        conn = _connect(p, readonly=True, immutable=not Path(f"{p}-wal").exists())
        try:
            _check_version(conn, p, exact=True)
        except BaseException:
            conn.close()
            raise
    return StateView(p, conn)


@dataclass(slots=True, eq=False)
class _Change:
    apply: Callable[[sqlite3.Connection], object]
    done: bool = False
    result: object = None
    error: StateError | None = None


class SqliteStore(_Reads):
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
        linger_s: float = _LINGER_S,
    ) -> None:
        self._path = path
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self.run_id = run_id
        self._limiter = limiter
        self._lock = anyio.Lock()
        self._queue: list[_Change] = []
        self._closed = False
        self._commits = 0
        self._linger_s = max(0.0, linger_s)
        #: Set once the commit that takes the current queue is over; ``None`` until a change lingers.
        self._taken: anyio.Event | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Clock,
        run_id: str | None = None,
        app_version: str | None = None,
        linger_s: float = _LINGER_S,
    ) -> _Opening:
        """Open (creating if missing) a state file: awaitable, or an async context manager that closes it.

        ``linger_s``: how long a change that may wait (see the module docstring) waits for a commit
        to share; 0 commits each at once, as urgent changes always are.
        """
        return _Opening(Path(path), clock, run_id or uuid.uuid4().hex[:12], app_version, linger_s)

    @property
    def path(self) -> Path:
        """The state file."""
        return self._path

    @property
    def commits(self) -> int:
        """Write transactions committed so far (group commit makes this ≪ the number of changes)."""
        return self._commits

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def flush(self) -> None:
        """Commit anything still queued now, lingering changes included."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await self._commit_queue()

    async def aclose(self) -> None:
        """Commit anything queued, then close both connections (SQLite checkpoints the WAL)."""
        if self._closed:
            return
        self._closed = True
        await self.flush()
        with anyio.CancelScope(shield=True), _mapped(self._path, "closing"):
            self._reader.close()  # here, on the thread that reads: never closed under a running read
            async with self._lock:
                await anyio.to_thread.run_sync(self._writer.close, limiter=self._limiter)

    def _now(self) -> str:
        return rfc3339(self._clock.now())

    # ---- group commit ---------------------------------------------------------------------

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
                await anyio.to_thread.run_sync(self._commit, batch, limiter=self._limiter)
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
            failure = StateError(f"state file {self._path}: commit failed: {exc}; {_advice(exc)}")
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
        """Set the phase (plus ``tail`` columns, fixed SQL text from this module) and log an event for
        what a later change would overwrite: intents, job ids, reasons."""
        conn.execute(
            f"UPDATE units SET phase = ?, updated_at = ?, run_id = ?{tail} WHERE key = ?",  # noqa: S608
            (to.value, now, self.run_id, *args, key),
        )
        if to.value not in _QUIET:
            conn.execute(
                "INSERT INTO events (unit_key, at, phase, detail) VALUES (?, ?, ?, ?)",
                (key, now, to.value, detail[:_DETAIL_MAX]),
            )

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
            _expect(conn, key, "mark submitting", CAN_SUBMIT)
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
            _expect(conn, key, "record a job id", CAN_RECORD_JOB)
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

        Lingers (see the module docstring): lost in a crash, the unit is still ``submitted`` with
        its job id, and the next run polls that job again for free."""
        now, outs = self._now(), [(str(a), str(u)) for a, u in outputs]
        if not outs:
            raise StateError(f"unit {key}: a success needs at least one output (mark it failed instead)")

        def apply(conn: sqlite3.Connection) -> None:
            _expect(conn, key, "mark succeeded", CAN_SUCCEED)
            conn.execute("DELETE FROM outputs WHERE unit_key = ?", (key,))
            conn.executemany(
                "INSERT INTO outputs (unit_key, n, asset_id, url) VALUES (?, ?, ?, ?)",
                [(key, n, a, u) for n, (a, u) in enumerate(outs, 1)],
            )
            self._transition(conn, key, Phase.SUCCEEDED, now, f"{len(outs)} outputs", ", finished_at=?", now)

        await self._write(apply, urgent=False)

    async def record_download(
        self, key: str, n: int, *, path: str, bytes: int, sha256: str, at: datetime | None = None
    ) -> None:
        """Record that output ``n`` is on disk and verified (after the file's rename was fsynced).

        Lingers: lost in a crash, the next run finds the published file with its sidecar and
        adopts it (``Delivery._adopt_published``) without downloading or paying again."""
        now, when = self._now(), rfc3339(at or self._clock.now())

        def apply(conn: sqlite3.Connection) -> None:
            _expect(conn, key, "record a download", {Phase.SUCCEEDED})
            cur = conn.execute(
                "UPDATE outputs SET path = ?, bytes = ?, sha256 = ?, downloaded_at = ?"
                " WHERE unit_key = ? AND n = ?",
                (path, int(bytes), sha256, when, key, int(n)),
            )
            if cur.rowcount != 1:
                raise StateError(f"unit {key} has no output {n}")
            conn.execute("UPDATE units SET updated_at = ?, run_id = ? WHERE key = ?", (now, self.run_id, key))

        await self._write(apply, urgent=False)

    async def mark_done(self, key: str) -> None:
        """Close the unit: refused while any recorded output is not downloaded.

        Lingers: lost in a crash, the unit stays ``succeeded``; the next run finds its outputs
        recorded (or adopts the published files, if their records were lost too) and closes it
        without a request."""
        now = self._now()

        def apply(conn: sqlite3.Connection) -> None:
            _expect(conn, key, "mark done", CAN_FINISH)
            sql = "SELECT n FROM outputs WHERE unit_key = ? AND downloaded_at IS NULL ORDER BY n"
            missing = [n for (n,) in conn.execute(sql, (key,))]
            if missing:
                raise StateError(f"unit {key}: outputs {missing} are not downloaded yet")
            self._transition(conn, key, Phase.DONE, now, "done")

        await self._write(apply, urgent=False)

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

    async def reopen(self, key: str, missing: Iterable[int]) -> None:
        """A done unit whose files are gone: back to succeeded with those outputs to fetch again.

        The job and its outputs are kept, so the files come back without paying again.
        """
        now = self._now()
        numbers = sorted(set(missing))

        def apply(conn: sqlite3.Connection) -> None:
            _expect(conn, key, "reopen", CAN_REOPEN)
            conn.executemany(
                "UPDATE outputs SET path = NULL, bytes = NULL, sha256 = NULL, downloaded_at = NULL"
                " WHERE unit_key = ? AND n = ?",
                [(key, n) for n in numbers],
            )
            self._transition(conn, key, Phase.SUCCEEDED, now, f"outputs {numbers} missing on disk")

        await self._write(apply)

    async def mark_failed(self, key: str, error: str, kind: str) -> None:
        """A permanent failure with its reason; only ``reset(Phase.FAILED)`` brings it back."""
        await self._simple(key, Phase.FAILED, CAN_FAIL, error, kind)

    async def mark_unknown(self, key: str, reason: str) -> None:
        """Park a unit whose outcome cannot be learned (lost intent, vanished job); see ``reset``."""
        await self._simple(key, Phase.UNKNOWN, CAN_PARK, reason, "unknown")

    async def mark_pending(self, key: str, reason: str) -> None:
        """Back to pending when the API certainly created nothing (e.g. a 429); attempts are kept."""
        await self._simple(key, Phase.PENDING, CAN_UNSEND, reason, None)

    async def _simple(self, key: str, to: Phase, allowed: Set[Phase], reason: str, kind: str | None) -> None:
        now = self._now()
        tail = ", last_error = ?, error_kind = ?" + (", finished_at = ?" if to is Phase.FAILED else "")
        args = (reason, kind, now) if to is Phase.FAILED else (reason, kind)

        def apply(conn: sqlite3.Connection) -> None:
            _expect(conn, key, f"mark {to}", allowed)
            self._transition(conn, key, to, now, reason, tail, *args)

        await self._write(apply)

    async def update_urls(self, key: str, outputs: Sequence[tuple[str, str]]) -> None:
        """Replace expired URLs with fresh ones from a new job read; asset ids must match."""
        now, outs = self._now(), [(str(a), str(u)) for a, u in outputs]

        def apply(conn: sqlite3.Connection) -> None:
            _expect(conn, key, "update URLs", {Phase.SUCCEEDED})
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
                self._transition(conn, k, Phase.PENDING, now, f"reset from {phase}: {err or ''}", _FORGET)
            return len(chosen)

        return await self._write(apply)

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
        """Append a verdict (``approve``, ``reject`` or ``undo``) for the asset with this sha256."""
        if verdict not in VERDICTS:
            raise StateError(f"a decision is approve, reject or undo, not {verdict!r}")
        sha = sha256.strip().lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise StateError(f"a decision needs the asset's sha256 (64 hex digits), not {sha256!r}")
        record = DecisionRecord(sha, verdict, note or None, path, item_id, rfc3339(at or self._clock.now()))

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO decisions (sha256, verdict, note, path, item_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                (record.sha256, record.verdict, record.note, record.path, record.item_id, record.at),
            )

        await self._write(apply)
        return record

    async def regenerate(
        self, units: Mapping[str, str], retired: Sequence[RetiredRecord], seeds: Mapping[str, int]
    ) -> int:
        """Send units back to ``pending`` for a paid regeneration, in one transaction.

        ``units`` maps a unit key to why (``rejected`` or ``superseded``); their outputs are
        forgotten (``retired`` says where the old files went) and ``seeds`` records the seed each
        new request carries (resource kind ``seed``). Only done, succeeded, failed or pending units
        qualify: one with a job in flight is refused. Returns how many units changed phase."""
        now = self._now()

        def apply(conn: sqlite3.Connection) -> int:
            changed = 0
            for key, why in units.items():
                phase = _expect(conn, key, "regenerate", CAN_REGENERATE)
                conn.execute("DELETE FROM outputs WHERE unit_key = ?", (key,))
                if phase is not Phase.PENDING:
                    self._transition(conn, key, Phase.PENDING, now, f"regenerate: {why}", _FORGET)
                    changed += 1
            conn.executemany(
                "INSERT INTO retired (unit_key, n, phase, path, sha256, job_id, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.unit_key, r.n, r.phase, r.path, r.sha256, r.job_id, r.at) for r in retired],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO resources (kind, key, value_json, updated_at)"
                " VALUES ('seed', ?, ?, ?)",
                [(key, json.dumps({"seed": int(seed)}), now) for key, seed in seeds.items()],
            )
            return changed

        return await self._write(apply)


def _expect(conn: sqlite3.Connection, key: str, action: str, allowed: Set[Phase]) -> Phase:
    row = conn.execute("SELECT phase FROM units WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise StateError(f"cannot {action}: no unit with key {key!r} in the state file")
    if (phase := PHASES[row[0]]) not in allowed:
        raise StateError(f"unit {key}: cannot {action} while {phase} (only from {'/'.join(sorted(allowed))})")
    return phase


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
            _open_writer, path, rfc3339(clock.now()), app_version, limiter=limiter
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
