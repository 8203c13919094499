"""One run per state file: an exclusive ``flock`` on ``<state>.lock``.

Why flock and not a PID file: the kernel drops the lock when the holder dies, however it dies
(SIGKILL, OOM, power), so a stale file never blocks a cron rerun and nobody has to guess whether
an old PID still means anything. The file's content (pid, host, start time, program) is only there
to name the holder in the error a second run gets. Not for NFS: flock is per host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Self

from pipeline.clock import Clock, SystemClock
from pipeline.errors import LockedError, StateError

__all__ = ["LockHolder", "RunLock"]


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds (or last held) a run lock, as written in the lock file."""

    pid: int | None
    host: str
    started_at: str
    argv0: str

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        """Read the lock file's JSON; ``None`` when it is empty or not ours (never raises)."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        pid = data.get("pid")
        return cls(
            pid=pid if isinstance(pid, int) else None,
            host=str(data.get("host", "?")),
            started_at=str(data.get("started_at", "?")),
            argv0=str(data.get("argv0", "?")),
        )

    def describe(self) -> str:
        """``pid 123 on host 'box' since 2026-01-01T00:00:00Z (photogpt-pipeline)``."""
        return f"pid {self.pid} on host {self.host!r} since {self.started_at} ({self.argv0})"


class RunLock:
    """Exclusive, non-blocking lock for one state file. Use ``with RunLock(path):`` (or ``async with``).

    ``previous`` is set by ``acquire`` when the file still named an earlier holder: that run
    ended without releasing (it was killed), which is worth a log line.
    """

    def __init__(self, state_path: str | os.PathLike[str], *, clock: Clock | None = None) -> None:
        self.path = Path(f"{os.fspath(state_path)}.lock")
        self._clock = clock or SystemClock()
        self._fd: int | None = None
        self.previous: LockHolder | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise LockedError naming the holder; never waits."""
        if self._fd is not None:
            return
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(mode=0o700, parents=True)
                self.path.parent.chmod(0o700)
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            hint = "it is a symlink; use the real path" if exc.errno == errno.ELOOP else "check the directory"
            raise StateError(f"cannot open the run lock {self.path}: {exc}; {hint}") from exc
        try:
            os.fchmod(fd, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(self._held_message(_read(fd))) from None
            self.previous = LockHolder.parse(_read(fd))
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": self._clock.now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "argv0": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python",
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        except BaseException as exc:
            os.close(fd)  # closing drops the flock if we took it
            if isinstance(exc, OSError):
                raise StateError(f"cannot use the run lock {self.path}: {exc}") from exc
            raise
        self._fd = fd

    def _held_message(self, text: str) -> str:
        holder = LockHolder.parse(text)
        who = holder.describe() if holder else "a process that has not written its details yet"
        pid = holder.pid if holder and holder.pid else "<pid>"
        return (
            f"another run is using this state file: {who} holds {self.path}. Wait for it to finish, or check "
            f"it with `ps -p {pid}` on that host; the lock frees itself when that process exits."
        )

    def release(self) -> None:
        """Empty the file and drop the lock. The file stays: unlinking it lets a racer lock a new inode."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 4096, 0).decode("utf-8", "replace")
    return ""
