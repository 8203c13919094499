"""Opening a state file: its schema (DDL, migrations, version) and the checks before it is trusted.

Why the checks: the file records which jobs were paid for, so one that is damaged, a symlink, from a
newer photogpt-pipeline or not a state file at all is refused with a message saying what to do
(reliability-plan §1), never silently recreated. WAL and ``synchronous=FULL`` are set here too.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.request import pathname2url

import pipeline
from pipeline.errors import StateError
from pipeline.state.records import Phase

__all__ = ["SCHEMA_VERSION", "advice", "check_version", "connect", "mapped", "open_writer", "refuse_symlinks"]

#: Bump with a migration in ``_MIGRATIONS`` whenever the schema changes.
SCHEMA_VERSION = 2
_BUSY_TIMEOUT_S = 5.0

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


def advice(exc: BaseException) -> str:
    """What to do about an sqlite3/OS error on the state file, in words for the operator."""
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
def mapped(path: Path, doing: str) -> Iterator[None]:
    """Turn sqlite3/OS errors into a StateError that names the file and says what to do."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise StateError(f"state file {path}: {doing} failed: {exc}; {advice(exc)}") from exc


def refuse_symlinks(path: Path) -> None:
    """Refuse a state file (or its ``-wal``/``-shm``) that is a symlink: never write through one."""
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if candidate.is_symlink():
            raise StateError(f"state file {candidate} is a symlink; not following it (use the real path)")


def connect(path: Path, *, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from any one thread."""
    query = "mode=ro" + ("&immutable=1" if immutable else "") if readonly else "mode=rw"
    uri = f"file:{pathname2url(str(path.absolute()))}?{query}"
    return sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
    )


def check_version(conn: sqlite3.Connection, path: Path, *, exact: bool) -> int:
    """The file's schema version: refused if newer than ours, or (``exact``) if not ours."""
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


def open_writer(
    path: Path, now: str, app_version: str | None
) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Create or open the file (0600 in a 0700 directory), check it, migrate it; runs in a thread."""
    refuse_symlinks(path)
    with mapped(path, "opening"):
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
            path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
        with suppress(FileExistsError):
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(path, flags, 0o600))
        if not stat.S_ISREG(path.lstat().st_mode):
            raise StateError(f"state file {path} is not a regular file")
        conn = connect(path, readonly=False)
    try:
        with mapped(path, "checking"):
            result = list(dict.fromkeys(row[0] for row in conn.execute("PRAGMA quick_check")))
            if result != ["ok"]:
                raise StateError(
                    f"state file {path} failed its integrity check ({'; '.join(result[:3])}); "
                    f"{advice(sqlite3.DatabaseError('malformed'))}"
                )
            version = check_version(conn, path, exact=False)
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise StateError(f"state file {path}: SQLite cannot use WAL here; put it on a local disk")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            if version < SCHEMA_VERSION:
                _migrate(conn, path, version, now, app_version)
            for side in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                if side.exists() and side.stat().st_mode & 0o077:
                    side.chmod(0o600)
            reader = connect(path, readonly=True)
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
