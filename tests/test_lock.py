"""The run lock: one run per state file, a holder named in the error, nothing stale after a kill."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.clock import FakeClock
from pipeline.errors import LockedError, StateError
from pipeline.state.lock import LockHolder, RunLock

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pipeline.state.lock import RunLock
    lock = RunLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture(name="state")
def _state(tmp_path: Path) -> Path:
    return tmp_path / "state" / "run.db"


@pytest.fixture(name="holder")
def _holder(state: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock until killed."""
    proc = subprocess.Popen(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-c", HOLDER, str(state)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


class TestRunLock:
    def test_acquire_writes_the_holder_and_release_empties_it(self, state: Path, clock: FakeClock) -> None:
        """The lock file is 0600 in a 0700 directory, names this process, and is emptied (not deleted)."""
        old = os.umask(0o022)
        try:
            lock = RunLock(state, clock=clock)
            held = []
            with lock:
                held.append(lock.held)
                info = json.loads(lock.path.read_text())
                assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
                assert info["started_at"] == "2026-01-01T00:00:00Z" and info["argv0"]
                assert lock.path.stat().st_mode & 0o777 == 0o600
                assert state.parent.stat().st_mode & 0o777 == 0o700
            held.append(lock.held)
            assert held == [True, False]
            assert lock.path.exists() and lock.path.read_text() == ""
            lock.release()  # releasing twice is harmless
        finally:
            os.umask(old)

    def test_second_lock_in_the_same_process_is_refused(self, state: Path) -> None:
        """flock is per open file, so even this process cannot take it twice; the error names the pid."""
        with RunLock(state), pytest.raises(LockedError, match=f"pid {os.getpid()} on host") as err:
            RunLock(state).acquire()
        assert err.value.exit_code == 4 and isinstance(err.value, StateError)
        assert "ps -p" in str(err.value) and str(state) in str(err.value)
        with RunLock(state) as again:  # free once the first is released
            assert again.held

    async def test_async_context_manager(self, state: Path) -> None:
        """The lock works with ``async with`` too."""
        async with RunLock(state) as lock:
            held = [lock.held]
        assert [*held, lock.held] == [True, False]

    def test_symlinked_lock_file_is_refused(self, state: Path, tmp_path: Path) -> None:
        """A lock path that is a symlink is not followed."""
        state.parent.mkdir()
        target = tmp_path / "elsewhere"
        target.write_text("")
        Path(f"{state}.lock").symlink_to(target)
        with pytest.raises(StateError, match="symlink"):
            RunLock(state).acquire()

    def test_holder_text_is_parsed_leniently(self) -> None:
        """Empty, foreign or partial lock files never break the error message."""
        assert LockHolder.parse("") is None and LockHolder.parse("[1]") is None
        holder = LockHolder.parse('{"pid": "x", "host": "h"}')
        assert holder is not None and holder.pid is None and holder.host == "h"


@pytest.mark.slow
class TestOtherProcess:
    def test_lock_held_by_another_process_names_it(self, state: Path, holder: subprocess.Popen[str]) -> None:
        """A second run gets LockedError with the holder's pid and host."""
        with pytest.raises(LockedError, match=f"pid {holder.pid} on host '{socket.gethostname()}'"):
            RunLock(state).acquire()

    def test_killed_holder_leaves_no_stale_lock(self, state: Path, holder: subprocess.Popen[str]) -> None:
        """SIGKILL the holder: the next run gets the lock at once and learns who died holding it."""
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with RunLock(state) as lock:
            assert lock.previous is not None and lock.previous.pid == holder.pid
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
