"""A throwaway PostgreSQL for the tests: the machine's own server binaries, a temp data directory,
loopback only, ``fsync=off``, password authentication.

In CI (``CI=true``) missing binaries are a failure; elsewhere the tests that need the server skip
with a message naming what to install.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ADMIN = "photogpt_admin"
ADMIN_PASSWORD = "adm-9f2c-secret-pass"
USER = "photogpt"
PASSWORD = "pg-7e1d-very-secret-pass"
INSTALL_HINT = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"


@dataclass(frozen=True, slots=True)
class PgServer:
    """A running throwaway server: where it listens and who may log in."""

    host: str
    port: int

    def url(self, database: str = USER, *, user: str = USER, password: str = PASSWORD) -> str:
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{database}"

    def admin_url(self, database: str = "postgres") -> str:
        return self.url(database, user=ADMIN, password=ADMIN_PASSWORD)

    def create_database(self, name: str) -> str:
        """A fresh database owned by the test user; returns its URL."""
        import psycopg

        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {USER}')
        return self.url(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bin() -> Path | None:
    """The server binaries: ``$PG_BIN``, the newest /usr/lib/postgresql/*/bin, or ``pg_ctl`` on PATH."""
    if env := os.environ.get("PG_BIN"):
        return Path(env)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def require_bin() -> Path:
    """The binaries, or a skip (a failure in CI: there the tests must run)."""
    bindir = find_bin()
    if bindir is None or not (bindir / "initdb").exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(INSTALL_HINT + " (CI must run the PostgreSQL tests; .ci/run installs it)")
        pytest.skip(INSTALL_HINT)
    return bindir


def _as_server_user(argv: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as ``postgres`` then."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--", *argv] if runuser else ["su", "postgres", "-c", " ".join(argv)]


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")


@contextmanager
def throwaway_postgres() -> Iterator[PgServer]:
    """Start a server in a temp directory, create the test user, stop and remove it afterwards."""
    bindir = require_bin()
    root = Path(tempfile.mkdtemp(prefix="photogpt-pg-"))
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(ADMIN_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    _run([str(bindir / "initdb"), "-D", str(data), "-U", ADMIN, f"--pwfile={pwfile}",
          "--auth=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"])  # fmt: skip
    try:
        server = PgServer("127.0.0.1", _start(bindir, data, root))
        _create_user(server)
        yield server
    finally:
        subprocess.run(  # noqa: S603
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def _start(bindir: Path, data: Path, root: Path) -> int:
    """Start the server on a free port; returns the port.

    The port is found free here and bound by the server a moment later: another test worker's
    server (or any client's outgoing connection) may take it in between. The server then fails
    with "Address already in use" (never joins someone else's port), so try a fresh port."""
    log = root / "server.log"
    for _attempt in range(5):
        port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        argv = [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ]
        try:
            _run(argv)
        except RuntimeError:
            if "Address already in use" not in log.read_text(errors="replace"):
                raise
            log.unlink()
            continue
        return port
    raise RuntimeError(f"PostgreSQL found no free port in 5 tries: {log.read_text(errors='replace')}")


def _create_user(server: PgServer) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(server.admin_url(), autocommit=True) as conn:
                conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
                conn.execute(f"CREATE DATABASE {USER} OWNER {USER}")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
