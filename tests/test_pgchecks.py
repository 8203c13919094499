"""The shared run's start-up file check, in process against a real PostgreSQL: which worker checks,
when a check counts for a worker that joins, and what is reopened (engine/recheck.py,
state/pgchecks.py). The multi-process behaviour is in tests/test_shared_resume.py."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import psycopg
import pytest

from pipeline.clock import FakeClock
from pipeline.engine.recheck import Recheck
from pipeline.errors import NoStateYetError
from pipeline.output.local import LocalOutputStore
from pipeline.state.pgchecks import Turn
from pipeline.state.pgreads import open_pg_view
from pipeline.state.postgres import PostgresStore
from pipeline.state.records import Phase
from tests.pg import PgServer
from tests.test_state import key, unit

Opener = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture(name="opened")
async def _opened(pg_server: PgServer, clock: FakeClock) -> AsyncIterator[Opener]:
    """Opens workers of one fresh run (cooperating, 60 s leases unless told); closes them at the end."""
    run, stores = f"check-{uuid.uuid4().hex[:8]}", []

    async def opener(**kwargs: object) -> PostgresStore:
        args: dict[str, object] = {"clock": clock, "run": run, "lease_s": 60.0, **kwargs}
        store = await PostgresStore.open(pg_server.url(), **args)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.aclose()


async def _done(store: PostgresStore, root: Path, count: int) -> None:
    """``count`` units done the ordinary way, each with one file on disk (an exclusive store)."""
    await store.sync_units(unit(i) for i in range(count))
    for i in range(count):
        k, data = key(i), f"picture {i}".encode() * 50
        rel = f"item-{i:04d}/image-1.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        await store.mark_submitting(k)
        await store.mark_submitted(k, f"job-{uuid.uuid4().hex}")
        await store.mark_succeeded(k, [(f"asset-{i}", f"http://127.0.0.1/a/{i}")])
        await store.record_download(k, 1, path=rel, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        await store.mark_done(k)


async def test_one_worker_checks_while_the_others_work(opened: Opener) -> None:
    first, second = await opened(), await opened()
    async with first.output_checks().turn() as mine:
        assert mine.turn is Turn.MINE
        async with second.output_checks().turn() as other:
            assert other.turn is Turn.BUSY  # the others do not stat the same files
    async with second.output_checks().turn() as later:
        assert later.turn is Turn.COUNTED  # it ran while this worker was there


async def test_a_check_whose_worker_died_is_done_again(opened: Opener) -> None:
    first, second = await opened(), await opened()
    with pytest.raises(RuntimeError):
        async with first.output_checks().turn() as mine:
            assert mine.turn is Turn.MINE
            raise RuntimeError("the worker died mid-check")
    async with second.output_checks().turn() as redo:
        assert redo.turn is Turn.MINE  # the lock is free again and nothing counts


async def test_the_next_run_checks_again(opened: Opener) -> None:
    first = await opened()
    async with first.output_checks().turn():
        pass
    await first.aclose()  # the run ended: its worker is gone
    later = await opened()
    async with later.output_checks().turn() as again:
        assert again.turn is Turn.MINE


async def test_missing_and_resized_files_are_reopened_once(opened: Opener, tmp_path: Path) -> None:
    setup = await opened(lease_s=None)
    await _done(setup, tmp_path, 4)
    (tmp_path / "item-0001/image-1.png").unlink()
    (tmp_path / "item-0002/image-1.png").write_bytes(b"short")
    (tmp_path / "item-0003/image-1.png").unlink()  # not in this manifest (stale): left alone
    manifest = {key(0), key(1), key(2)}
    first, second = await opened(), await opened()
    output = LocalOutputStore(tmp_path)

    assert await Recheck(first, manifest, output, FakeClock()).start() is Turn.MINE
    phases = first.phases()
    assert [phases[key(i)] for i in range(4)] == [Phase.DONE, Phase.SUCCEEDED, Phase.SUCCEEDED, Phase.DONE]
    gone = first.get(key(1))
    assert gone is not None and gone.outputs[0].downloaded_at is None and gone.outputs[0].path is None
    assert await Recheck(second, manifest, output, FakeClock()).settled()  # counted: exit when done
    assert second.phases() == phases


async def test_a_check_stopped_by_a_signal_is_not_counted(opened: Opener, tmp_path: Path) -> None:
    await _done(await opened(lease_s=None), tmp_path, 1)
    (tmp_path / "item-0000/image-1.png").unlink()
    first, second = await opened(), await opened()
    stop = anyio.Event()
    stop.set()
    output = LocalOutputStore(tmp_path)
    assert await Recheck(first, {key(0)}, output, FakeClock(), stop).start() is Turn.MINE
    assert first.phases()[key(0)] is Phase.DONE  # stopped before it reopened anything
    assert not await Recheck(second, {key(0)}, output, FakeClock()).settled()  # did it, reopened one
    assert second.phases()[key(0)] is Phase.SUCCEEDED


async def test_a_busy_check_keeps_workers_from_exiting(opened: Opener, tmp_path: Path) -> None:
    first, second = await opened(), await opened()
    async with first.output_checks().turn():
        assert not await Recheck(second, set(), LocalOutputStore(tmp_path), FakeClock()).settled()
    assert await Recheck(second, set(), LocalOutputStore(tmp_path), FakeClock()).settled()


def test_a_database_nothing_ran_against_has_no_state_yet(pg_server: PgServer) -> None:
    url = pg_server.create_database(f"empty_{uuid.uuid4().hex[:6]}")
    with pytest.raises(NoStateYetError, match="no photogpt-pipeline state") as caught:
        open_pg_view(url, "any")
    assert caught.value.exit_code == 2
    with psycopg.connect(url) as conn:  # looking created nothing
        row = conn.execute("SELECT to_regnamespace('photogpt') IS NULL").fetchone()
    assert row == (True,)
