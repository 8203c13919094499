"""Reaching the shared state database: the URL without its password, clear errors, the schema.

Why here and not in the store: the rules for saying what went wrong (unreachable, wrong password,
a schema from a newer photogpt-pipeline) and for never showing the password are the same for the
store's pool, its read connection and ``status``.

The schema lives in the ``photogpt`` schema of the database, migrated by the plain SQL files in
``migrations/`` (``NNNN_name.sql``, applied in order, each in the transaction that records it).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import psycopg

from pipeline import logs
from pipeline.errors import StateUnavailableError

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "connect_kwargs",
    "holder_id",
    "key_hash",
    "map_error",
    "migrate",
    "migrations",
    "redact_url",
]

SCHEMA = "photogpt"
_MIGRATE_LOCK = 0x70_68_6F_74_6F_67_70_74  # "photogpt": serialises migrations across workers
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_PASSWORD_KV = re.compile(r"(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, SQL)`` of every migration shipped in the package, in order."""
    found = []
    for entry in (resources.files("pipeline.state") / "migrations").iterdir():
        if (m := _FILE.match(entry.name)) is not None:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


#: The newest schema this version knows: the number of the last migration file.
SCHEMA_VERSION = migrations()[-1][0]


def redact_url(url: str) -> str:
    """The URL (or ``key=value`` conninfo) with its password replaced by ``***``: safe to show."""
    if "://" not in url:
        return _PASSWORD_KV.sub(f"password={logs.MASK}", url)
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{logs.MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
    query = re.sub(r"(?i)(^|&)password=[^&]*", rf"\1password={logs.MASK}", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _password(url: str) -> str | None:
    if "://" in url:
        return urlsplit(url).password
    m = _PASSWORD_KV.search(url)
    return m.group(1).strip("'") if m else None


def connect_kwargs(url: str) -> dict[str, object]:
    """Keyword arguments for every connection: the search path, a connect timeout, an app name.

    Registers the password with the log redaction first, so no log line can carry it."""
    if (password := _password(url)) is not None:
        logs.register_secret(password)
    return {
        "options": f"-c search_path={SCHEMA}",
        "connect_timeout": 10,
        "application_name": "photogpt-pipeline",
    }


def map_error(url: str, exc: BaseException, doing: str) -> StateUnavailableError:
    """A psycopg/OS error as a StateUnavailableError that names the database (without the password)
    and says what to do."""
    text = logs.redact(str(exc)).strip()
    if (password := _password(url)) is not None:
        text = text.replace(password, logs.MASK)
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        advice = "wrong user or password: check the URL given with --state or PHOTOGPT_STATE_URL"
    elif "does not exist" in low and "database" in low:
        advice = "the database does not exist: create it first (createdb), the tables are created here"
    elif "connection refused" in low or "timeout" in low or "could not translate" in low:
        advice = "the database server cannot be reached: check host, port and that it is running"
    elif "permission denied" in low:
        advice = "the user lacks rights: it needs CREATE on the database (for the photogpt schema)"
    else:
        advice = "check the URL and the database server's log"
    return StateUnavailableError(f"state database {redact_url(url)}: {doing} failed: {text}; {advice}")


def holder_id() -> str:
    """Who this worker is, for leases and ``status``: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def key_hash(api_key: str) -> str:
    """What the shared limits are keyed by: a hash of the API key (the key itself is never stored)."""
    return hashlib.sha256(b"photogpt-limits\0" + api_key.encode()).hexdigest()[:32]


async def migrate(conn: psycopg.AsyncConnection[object], url: str, app_version: str) -> int:
    """Create or upgrade the schema (one worker at a time); refuse a schema newer than this version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version (version integer PRIMARY KEY,"
            " name text NOT NULL, app_version text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        cur = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_version")  # noqa: S608
        row = await cur.fetchone()
        version = int(row[0]) if row else 0  # type: ignore[index]
        if version > SCHEMA_VERSION:
            raise StateUnavailableError(
                f"state database {redact_url(url)} has schema version {version}, but this "
                f"photogpt-pipeline only knows version {SCHEMA_VERSION}: upgrade photogpt-pipeline "
                "(the database was left untouched)"
            )
        for number, name, sql in migrations():
            if number > version:
                await conn.execute(sql.encode())  # several statements: sent as one simple query
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.schema_version (version, name, app_version) VALUES (%s, %s, %s)",  # noqa: S608
                    (number, name, app_version),
                )
        return max(version, SCHEMA_VERSION)
