"""The state store: phases, group commit, durability across crashes, and refusal of bad files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.clock import FakeClock, SystemClock
from pipeline.errors import StateError
from pipeline.state.sqlite import SCHEMA_VERSION, Phase, StateStore, UnitLike, open_readonly

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Unit:
    key: str
    item_id: str
    step: str
    index: int
    request: dict[str, Any] = field(default_factory=dict)
    upstream: str | None = None
    expected_outputs: int = 1


def unit(i: int, *, step: str = "image", index: int = 1, item: str | None = None) -> Unit:
    return Unit(f"{i:032x}", item or f"item-{i:04d}", step, index, {"prompt": f"photo {i}", "n": 1})


def key(i: int) -> str:
    return f"{i:032x}"


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file's mtime and bytes: what "nothing was written" means."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in directory.iterdir()}


def raw(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read with a separate connection, as a second process would."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture(name="path")
def _path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "run.db"


@pytest.fixture(name="store")
async def _store(path: Path, clock: FakeClock) -> AsyncIterator[StateStore]:
    # No lingering: a FakeClock's waits advance it, and these tests pin exact timestamps
    # (lingering has its own tests, on the system clock).
    async with StateStore.open(path, clock=clock, run_id="run-1", linger_s=0) as store:
        await store.sync_units([unit(i) for i in range(5)])
        yield store


def _unit_protocol_accepts_frozen_dataclasses(u: Unit) -> UnitLike:
    return u  # type-checked: a frozen dataclass is a UnitLike


class TestSync:
    """SQLite-specific: the contract's behaviour tests are in tests/test_state_contract.py."""

    async def test_many_units_in_one_transaction(self, path: Path, clock: FakeClock) -> None:
        """20,000 units are one commit; phases() and counts() see all of them."""
        async with StateStore.open(path, clock=clock) as store:
            before = store.commits
            assert await store.sync_units(unit(i) for i in range(20_000)) == 20_000
            assert store.commits == before + 1
            assert len(store.phases()) == 20_000 and store.counts()[Phase.PENDING] == 20_000


class TestGroupCommit:
    async def test_concurrent_intents_share_commits(self, path: Path, clock: FakeClock) -> None:
        """200 concurrent mark_submitting: all on disk when they return, in far fewer transactions."""
        async with StateStore.open(path, clock=clock) as store:
            await store.sync_units(unit(i) for i in range(200))
            before = store.commits
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(store.mark_submitting, key(i))
            assert store.commits - before <= 10
            rows = raw(path, "SELECT phase, attempts, count(*) FROM units GROUP BY phase, attempts")
            assert rows == [("submitting", 1, 200)]

    async def test_a_failing_commit_is_a_state_error(self, store: StateStore) -> None:
        """A commit that SQLite refuses fails every caller of that batch with a StateError."""
        store._writer.close()  # stand-in for an I/O error under the transaction
        with pytest.raises(StateError, match="commit failed"):
            await store.mark_submitting(key(0))

    async def test_flush_with_nothing_queued_is_harmless(self, store: StateStore) -> None:
        """flush() is a no-op when every mutator already waited for its own commit."""
        before = store.commits
        await store.flush()
        assert store.commits == before

    async def test_settings_protect_money(self, store: StateStore) -> None:
        """The writer runs in WAL with synchronous=FULL (2) and foreign keys on."""
        assert store._writer.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store._writer.execute("PRAGMA synchronous").fetchone() == (2,)
        assert store._writer.execute("PRAGMA foreign_keys").fetchone() == (1,)


async def submitted(store: StateStore, *indexes: int) -> None:
    """Units ``indexes`` as far as ``submitted`` (job ``job-i``)."""
    for i in indexes:
        await store.mark_submitting(key(i))
        await store.mark_submitted(key(i), f"job-{i}")


async def until_queued(store: StateStore, count: int) -> None:
    """Yield until ``count`` changes wait in the store's queue (they linger there)."""
    with anyio.fail_after(5):
        while len(store._queue) < count:  # noqa: ASYNC110 - the store has no event for "queued"
            await anyio.sleep(0.001)


class TestLinger:
    """mark_succeeded, record_download and mark_done wait a little to share a commit; the rest never do.

    Lingering waits on the store's clock; these tests give it the system clock (a FakeClock's
    waits pass at once, so nothing would linger) and keep every real wait under a second.
    """

    async def test_urgent_changes_are_durable_when_they_return(self, path: Path) -> None:
        """The intent and the job id are on disk for another connection the moment their call returns,
        however long the store lets other changes linger."""
        async with StateStore.open(path, clock=SystemClock(), linger_s=60) as store:
            await store.sync_units([unit(0)])
            with anyio.fail_after(5):
                await store.mark_submitting(key(0))
            assert raw(path, "SELECT phase, attempts FROM units") == [("submitting", 1)]
            with open_readonly(path) as view:
                assert view.phases() == {key(0): Phase.SUBMITTING}
            with anyio.fail_after(5):
                await store.mark_submitted(key(0), "job-0")
            assert raw(path, "SELECT phase, job_id FROM units") == [("submitted", "job-0")]
            with open_readonly(path) as view:
                assert view.get(key(0)).job_id == "job-0"  # type: ignore[union-attr]

    async def test_alone_it_commits_after_its_delay(self, path: Path) -> None:
        """Alone, a lingering change waits about linger_s, then commits itself: durable, and seen by
        the store's own reads, when it returns."""
        async with StateStore.open(path, clock=SystemClock(), linger_s=0.2) as store:
            await store.sync_units([unit(0)])
            await submitted(store, 0)
            before, started = store.commits, anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.mark_succeeded, key(0), [("asset-0", "https://cdn/0.png")])
                await anyio.sleep(0.05)
                assert store.commits == before  # still waiting for company
                assert raw(path, "SELECT phase FROM units") == [("submitted",)]
            assert 0.15 <= anyio.current_time() - started < 5
            assert store.commits == before + 1
            assert store.get(key(0)).phase is Phase.SUCCEEDED  # type: ignore[union-attr]
            assert raw(path, "SELECT phase FROM units") == [("succeeded",)]

    async def test_flush_commits_lingering_changes_at_once(self, path: Path) -> None:
        """flush() does not wait out the delay: it commits what lingers and its callers return."""
        async with StateStore.open(path, clock=SystemClock(), linger_s=60) as store:
            await store.sync_units([unit(0)])
            await submitted(store, 0)
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(store.mark_succeeded, key(0), [("asset-0", "https://cdn/0.png")])
                    await until_queued(store, 1)
                    assert raw(path, "SELECT phase FROM units") == [("submitted",)]
                    await store.flush()
                    assert raw(path, "SELECT phase FROM units") == [("succeeded",)]
                    assert store.get(key(0)).phase is Phase.SUCCEEDED  # type: ignore[union-attr]

    async def test_after_hurry_nothing_lingers(self, path: Path) -> None:
        """hurry() (a run's last units) commits what lingers now, and later changes do not wait."""
        async with StateStore.open(path, clock=SystemClock(), linger_s=60) as store:
            await store.sync_units([unit(0), unit(1)])
            await submitted(store, 0, 1)
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(store.mark_succeeded, key(0), [("asset-0", "https://cdn/0.png")])
                    await until_queued(store, 1)
                    store.hurry()
                await store.mark_succeeded(key(1), [("asset-1", "https://cdn/1.png")])
            assert raw(path, "SELECT phase FROM units") == [("succeeded",), ("succeeded",)]

    async def test_close_commits_lingering_changes(self, path: Path) -> None:
        """aclose() commits what lingers before it closes; the lingering callers return normally."""
        store = await StateStore.open(path, clock=SystemClock(), linger_s=60)
        await store.sync_units([unit(0)])
        await submitted(store, 0)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.mark_succeeded, key(0), [("asset-0", "https://cdn/0.png")])
                await until_queued(store, 1)
                await store.aclose()
        assert raw(path, "SELECT phase FROM units") == [("succeeded",)]

    async def test_an_urgent_commit_carries_lingering_changes(self, path: Path) -> None:
        """An intent arriving while downloads linger commits them with it, in one transaction, and
        their callers return with it (not after their own delay)."""
        async with StateStore.open(path, clock=SystemClock(), linger_s=60) as store:
            await store.sync_units(unit(i) for i in range(4))
            await submitted(store, 0, 1, 2)
            with anyio.fail_after(5):  # the lingering callers return with the intent, not after 60 s
                async with anyio.create_task_group() as tg:
                    for i in (0, 1, 2):
                        tg.start_soon(store.mark_succeeded, key(i), [(f"asset-{i}", f"https://cdn/{i}.png")])
                    await until_queued(store, 3)
                    before = store.commits
                    with anyio.fail_after(5):
                        await store.mark_submitting(key(3))
                    assert store.commits == before + 1
                    rows = raw(path, "SELECT key, phase FROM units ORDER BY key")
                    assert rows == [*((key(i), "succeeded") for i in (0, 1, 2)), (key(3), "submitting")]
            assert store.counts()[Phase.SUCCEEDED] == 3

    async def test_lingering_changes_share_commits(self, path: Path) -> None:
        """50 units downloaded and closed concurrently: a handful of commits, not 100."""
        async with StateStore.open(path, clock=SystemClock(), linger_s=0.05) as store:
            await store.sync_units(unit(i) for i in range(50))
            for i in range(50):
                await store.mark_submitting(key(i))
                await store.mark_submitted(key(i), f"job-{i}")
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(store.mark_succeeded, key(i), [(f"asset-{i}", f"https://cdn/{i}.png")])
            before = store.commits

            async def finish(i: int) -> None:
                await store.record_download(key(i), 1, path=f"out/{i}.png", bytes=1, sha256="ab" * 32)
                assert store.get(key(i)).outputs[0].downloaded  # type: ignore[union-attr]
                await store.mark_done(key(i))

            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(finish, i)
            assert store.commits - before <= 4
            assert raw(path, "SELECT phase, count(*) FROM units GROUP BY phase") == [("done", 50)]

    async def test_a_refused_lingering_change_raises_for_its_caller_only(self, store: StateStore) -> None:
        """mark_done before the download is refused; the lingering changes beside it commit."""
        await submitted(store, 0, 1)
        await store.mark_succeeded(key(0), [("asset-0", "https://cdn/0.png")])
        await store.mark_succeeded(key(1), [("asset-1", "https://cdn/1.png")])
        errors: list[str] = []

        async def done_too_early() -> None:
            try:
                await store.mark_done(key(0))
            except StateError as exc:
                errors.append(str(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(done_too_early)
            tg.start_soon(
                lambda: store.record_download(key(1), 1, path="out/1.png", bytes=1, sha256="ab" * 32)
            )
        assert len(errors) == 1 and "not downloaded" in errors[0]
        assert store.get(key(1)).outputs[0].downloaded  # type: ignore[union-attr]

    async def test_a_cancelled_lingering_caller_still_commits(self, path: Path) -> None:
        """Lingering is shielded like every write: cancelling the caller does not drop the change."""
        async with StateStore.open(path, clock=SystemClock(), linger_s=0.1) as store:
            await store.sync_units([unit(0)])
            await submitted(store, 0)
            with anyio.move_on_after(0.01):
                await store.mark_succeeded(key(0), [("asset-0", "https://cdn/0.png")])
            assert raw(path, "SELECT phase FROM units") == [("succeeded",)]

    async def test_no_linger_commits_at_once(self, path: Path) -> None:
        """linger_s=0: every change commits as soon as the write lock is free, as urgent ones do."""
        async with StateStore.open(path, clock=SystemClock(), linger_s=0) as store:
            await store.sync_units([unit(0)])
            await submitted(store, 0)
            with anyio.fail_after(5):
                await store.mark_succeeded(key(0), [("asset-0", "https://cdn/0.png")])
            assert raw(path, "SELECT phase FROM units") == [("succeeded",)]


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import anyio
    from pipeline.clock import FakeClock
    from pipeline.state.sqlite import StateStore

    async def main(path, how):
        store = await StateStore.open(path, clock=FakeClock())
        await store.mark_submitting("{k1}")
        await store.mark_submitting("{k2}")
        await store.mark_submitted("{k2}", "job-2")
        async with anyio.create_task_group() as tg:
            for i in range(10, 60):
                tg.start_soon(store.mark_submitting, f"{{i:032x}}")
        if how == "exit":
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)

    anyio.run(main, sys.argv[1], sys.argv[2])
    """
).format(k1=key(1), k2=key(2))


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
class TestCrashes:
    @pytest.mark.parametrize("how", ["exit", "kill"])
    async def test_intent_and_job_id_survive_a_kill(self, path: Path, clock: FakeClock, how: str) -> None:
        """os._exit / SIGKILL right after the awaits return: the reopened file has every change."""
        async with StateStore.open(path, clock=clock) as store:
            await store.sync_units(unit(i) for i in range(60))
        result = run_child(CHILD, str(path), how)
        assert result.returncode == (0 if how == "exit" else -signal.SIGKILL), result.stderr
        assert f"{path.name}-wal" in snapshot(path.parent)  # died without a checkpoint
        async with StateStore.open(path, clock=clock) as store:
            phases = store.phases()
            assert phases[key(1)] is Phase.SUBMITTING
            assert store.get(key(2)).job_id == "job-2"  # type: ignore[union-attr]
            assert all(phases[key(i)] is Phase.SUBMITTING for i in range(10, 60))

    async def test_file_size_limit_fails_the_commit_cleanly(self, path: Path, clock: FakeClock) -> None:
        """A write the OS refuses (RLIMIT_FSIZE, like a full disk) is a StateError; the file stays good."""
        async with StateStore.open(path, clock=clock) as store:
            await store.sync_units([unit(0)])
        code = textwrap.dedent(
            """
            import resource, signal, sys, anyio
            from pipeline.clock import FakeClock
            from pipeline.errors import StateError
            from pipeline.state.sqlite import StateStore

            class Big:
                def __init__(self, i):
                    self.key, self.item_id, self.step, self.index = f"{i:032x}", "x", "image", 1
                    self.request, self.upstream, self.expected_outputs = {"p": "x" * 4000}, None, 1

            async def main(path):
                store = await StateStore.open(path, clock=FakeClock())
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
                try:
                    await store.sync_units(Big(i) for i in range(1, 2000))
                except StateError as exc:
                    print("StateError:", exc)
                await store.mark_submitting(f"{0:032x}")

            anyio.run(main, sys.argv[1])
            """
        )
        result = run_child(code, str(path))
        assert "StateError:" in result.stdout and str(path) in result.stdout, result.stderr
        async with StateStore.open(path, clock=clock) as store:
            assert len(store.phases()) == 1 and store.phases()[key(0)] is Phase.SUBMITTING


class TestFiles:
    @pytest.mark.parametrize("umask", [0o022, 0o000])
    async def test_permissions(self, path: Path, clock: FakeClock, umask: int) -> None:
        """The directory is 0700 and the database, -wal and -shm are 0600 whatever the umask."""
        old = os.umask(umask)
        try:
            async with StateStore.open(path, clock=clock) as store:
                await store.sync_units([unit(0)])
                modes = {name: mode(path.parent / name) for name in snapshot(path.parent)}
                assert modes == {"run.db": 0o600, "run.db-wal": 0o600, "run.db-shm": 0o600}
                assert mode(path.parent) == 0o700
        finally:
            os.umask(old)

    async def test_loose_mode_is_tightened(self, path: Path, clock: FakeClock) -> None:
        """An existing state file readable by others is made 0600 on open."""
        async with StateStore.open(path, clock=clock):
            pass
        os.chmod(path, 0o644)
        async with StateStore.open(path, clock=clock):
            assert mode(path) == 0o600

    async def test_symlink_is_refused(self, path: Path, tmp_path: Path, clock: FakeClock) -> None:
        """A state path that is a symlink is refused for writing and reading."""
        async with StateStore.open(path, clock=clock):
            pass
        link = tmp_path / "link.db"
        link.symlink_to(path)
        with pytest.raises(StateError, match="symlink"):
            await StateStore.open(link, clock=clock)
        with pytest.raises(StateError, match="symlink"):
            open_readonly(link)

    async def test_newer_schema_is_refused_untouched(self, path: Path, clock: FakeClock) -> None:
        """A file from a newer version names both versions and is left byte-for-byte alone."""
        async with StateStore.open(path, clock=clock):
            pass
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version = 999")
        conn.close()
        before = snapshot(path.parent)
        with pytest.raises(StateError, match=f"version 999.*version {SCHEMA_VERSION}") as err:
            await StateStore.open(path, clock=clock)
        assert str(path) in str(err.value)
        assert snapshot(path.parent) == before
        with pytest.raises(StateError, match="999"):
            open_readonly(path)

    async def test_foreign_database_is_refused(self, path: Path, clock: FakeClock) -> None:
        """An SQLite file with other tables and no version is not ours to migrate."""
        path.parent.mkdir()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE photos (id)")
        conn.close()
        with pytest.raises(StateError, match="not a pipeline state file"):
            await StateStore.open(path, clock=clock)

    @pytest.mark.parametrize("damage", ["garbage", "truncated", "page-overwritten"])
    async def test_damaged_file_is_a_state_error_and_untouched(
        self, path: Path, clock: FakeClock, damage: str
    ) -> None:
        """Garbage, a truncated file or an overwritten page: StateError naming the file; bytes unchanged."""
        async with StateStore.open(path, clock=clock) as store:
            await store.sync_units(unit(i) for i in range(3000))
        damage_file(path, damage)
        before = snapshot(path.parent)
        with pytest.raises(StateError) as err:
            await StateStore.open(path, clock=clock)
        assert str(path) in str(err.value) and "move it aside" in str(err.value)
        assert snapshot(path.parent) == before

    async def test_failed_quick_check_is_reported(self, path: Path, clock: FakeClock) -> None:
        """A file that opens but fails PRAGMA quick_check (a tampered phase) is refused with the finding."""
        async with StateStore.open(path, clock=clock) as store:
            await store.sync_units([unit(0)])
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute("UPDATE units SET phase = 'bogus'")
        conn.commit()
        conn.close()
        with pytest.raises(StateError, match=r"integrity check \(CHECK constraint failed in units\)"):
            await StateStore.open(path, clock=clock)


def damage_file(path: Path, damage: str) -> None:
    data = path.read_bytes()
    if damage == "garbage":
        data = b"this is not a database at all " * 300
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = data[:4096] + b"\xa5" * 4096 + data[8192:]
    path.write_bytes(data)


class TestReadonly:
    async def test_view_reads_while_a_run_writes(self, store: StateStore, path: Path) -> None:
        """status can read a live file and sees each commit after it returns."""
        with open_readonly(path) as view:
            assert view.counts()[Phase.PENDING] == 5
            await store.mark_submitting(key(0))
            assert view.phases()[key(0)] is Phase.SUBMITTING
            assert [u.key for u in view.units(Phase.SUBMITTING)] == [key(0)]

    async def test_view_never_writes_or_creates(self, path: Path, clock: FakeClock) -> None:
        """With no run going, reading leaves the directory exactly as it was (no -wal/-shm appear)."""
        async with StateStore.open(path, clock=clock) as store:
            await store.sync_units([unit(0)])
        before = snapshot(path.parent)
        with open_readonly(path) as view:
            assert view.get(key(0)) is not None and view.stale_keys(set()) != []
        assert snapshot(path.parent) == before

    def test_missing_file_stays_missing(self, tmp_path: Path) -> None:
        """status on a path where nothing ran says so and creates nothing."""
        missing = tmp_path / "nowhere" / "state.db"
        with pytest.raises(StateError, match="no state file"):
            open_readonly(missing)
        assert not missing.parent.exists()


# ---- property: the phase graph is exactly the documented one --------------------------------

ALLOWED = {
    "submitting": {Phase.PENDING},
    "submitted": {Phase.SUBMITTING, Phase.UNKNOWN},
    "succeeded": {Phase.SUBMITTED},
    "download": {Phase.SUCCEEDED},
    "done": {Phase.SUCCEEDED},
    "failed": {Phase.PENDING, Phase.SUBMITTING, Phase.SUBMITTED, Phase.SUCCEEDED},
    "unknown": {Phase.SUBMITTING, Phase.SUBMITTED},
    "pending": {Phase.SUBMITTING},
    "reset_failed": {Phase.FAILED},
    "reset_unknown": {Phase.UNKNOWN},
}
TARGET = {
    "submitting": Phase.SUBMITTING, "submitted": Phase.SUBMITTED, "succeeded": Phase.SUCCEEDED,
    "done": Phase.DONE, "failed": Phase.FAILED, "unknown": Phase.UNKNOWN, "pending": Phase.PENDING,
    "reset_failed": Phase.PENDING, "reset_unknown": Phase.PENDING,
}  # fmt: skip


@pytest.fixture(name="scratch")
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.sampled_from(sorted(ALLOWED)), max_size=12))
def test_phase_graph_and_attempts(ops: list[str], scratch: Path) -> None:
    """Any call sequence: a call succeeds exactly when the graph allows it, and attempts counts intents."""

    async def run() -> None:
        path = scratch / f"{len(snapshot(scratch))}.db"
        async with StateStore.open(path, clock=FakeClock()) as store:
            await store.sync_units([unit(0)])
            k, phase, attempts, downloaded, job = key(0), Phase.PENDING, 0, False, 0
            for op in ops:
                ok = phase in ALLOWED[op] and not (op == "done" and not downloaded)
                try:
                    if op == "submitting":
                        await store.mark_submitting(k)
                    elif op == "submitted":
                        job += 1
                        await store.mark_submitted(k, f"job-{job}")
                    elif op == "succeeded":
                        await store.mark_succeeded(k, [("a", "https://cdn/a")])
                    elif op == "download":
                        await store.record_download(k, 1, path="a", bytes=1, sha256="00" * 32)
                    elif op == "done":
                        await store.mark_done(k)
                    elif op.startswith("reset"):
                        count = await store.reset(Phase.FAILED if op == "reset_failed" else Phase.UNKNOWN)
                        assert count == int(ok)
                    else:
                        await getattr(store, f"mark_{op}")(k, "why", *(["kind"] if op == "failed" else []))
                except StateError:
                    assert not ok, f"{op} refused from {phase}"
                else:
                    assert ok or op.startswith("reset"), f"{op} allowed from {phase}"
                rec = store.get(k)
                assert rec is not None
                if ok:
                    attempts += op == "submitting"
                    downloaded = op == "download" or (downloaded and op != "succeeded")
                    phase = TARGET.get(op, phase)
                assert (rec.phase, rec.attempts) == (phase, attempts)

    anyio.run(run)


def test_timestamps_are_utc_rfc3339() -> None:
    """Timestamps come from the injected clock, in UTC with a Z, whatever its zone."""
    from datetime import datetime, timezone

    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))))

    async def run(path: Path) -> str:
        async with StateStore.open(path, clock=clock) as store:
            await store.sync_units([unit(0)])
            rec = store.get(key(0))
            assert rec is not None
            return rec.updated_at

    with tempfile.TemporaryDirectory() as tmp:
        assert anyio.run(run, Path(tmp) / "s.db") == "2026-03-01T10:00:00.000Z"
