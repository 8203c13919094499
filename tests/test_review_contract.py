"""The review's contract (:mod:`pipeline.state.review_store`), written once and run over both stores:
the SQLite file and a run of the shared PostgreSQL database (the ``fresh`` fixture of
tests/test_state_contract.py). Then what only a shared database has: other workers holding units
while a reviewer decides or a regeneration starts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.clock import FakeClock
from pipeline.errors import LeaseLostError, StateError
from pipeline.state.opening import open_view
from pipeline.state.records import Phase
from pipeline.state.review_store import RetiredRecord, ReviewedState, ReviewStore, ReviewView
from pipeline.state.store import SharedState
from tests.pg import PgServer
from tests.test_state import key, unit
from tests.test_state_contract import Fresh, _fresh  # noqa: F401 - the fixture, over both stores

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture(name="store")
async def _store(fresh: Fresh) -> AsyncIterator[Any]:
    async with fresh() as store:
        await store.sync_units([unit(i) for i in range(4)])
        yield store  # both stores keep the review's Protocol too


def _view(fresh: Fresh, tmp_path: Path) -> ReviewView:
    """A read-only view of the same state, as ``review --json``, ``export`` and the gallery open it."""
    if fresh.kind == "sqlite":
        return open_view(tmp_path / "state.db")
    assert fresh._url is not None
    return open_view(SharedState(fresh._url, fresh._run))


async def _done(store: Any, i: int, sha: str) -> None:
    """Unit ``i`` done with one file whose sha256 is ``sha``."""
    await store.mark_submitting(key(i))
    await store.mark_submitted(key(i), f"job-{i}")
    await store.mark_succeeded(key(i), [(f"asset-{i}", "https://cdn/x.png")])
    await store.record_download(key(i), 1, path=f"item-{i}/image-1.png", bytes=3, sha256=sha)
    await store.mark_done(key(i))


def test_both_stores_keep_the_review_protocol(store: ReviewedState) -> None:
    assert isinstance(store, ReviewStore)


class TestDecisions:
    async def test_the_newest_by_time_wins_and_undo_clears(
        self, store: ReviewedState, fresh: Fresh, tmp_path: Path
    ) -> None:
        """An import may bring an older verdict: it does not win. Undo leaves no verdict; a view
        (another process) reads the same."""
        await store.record_decision(SHA_A, "reject", note="too dark", path="x/image-1.png", item_id="x")
        await store.record_decision(SHA_A, "approve", at=datetime(2020, 1, 1, tzinfo=UTC))
        await store.record_decision(SHA_B.upper(), "approve")
        await store.record_decision(SHA_B, "undo")
        await store.record_decision(SHA_C, "approve")
        current = store.decisions()
        assert sorted(current) == [SHA_A, SHA_C]
        a = current[SHA_A]
        assert (a.verdict, a.note, a.path, a.item_id, a.at) == (
            "reject", "too dark", "x/image-1.png", "x", "2026-01-01T00:00:00.000Z",
        )  # fmt: skip
        view = _view(fresh, tmp_path)
        try:
            assert view.decisions() == current
        finally:
            view.close()

    async def test_bad_verdicts_and_hashes_are_refused(self, store: ReviewedState) -> None:
        with pytest.raises(StateError, match="approve, reject or undo"):
            await store.record_decision(SHA_A, "maybe")
        with pytest.raises(StateError, match="sha256"):
            await store.record_decision("not-a-hash", "approve")
        assert store.decisions() == {}

    async def test_counts_per_unit(self, store: ReviewedState) -> None:
        """A unit is approved when all its judged files are, rejected when any is."""
        for i, sha in enumerate((SHA_A, SHA_B, SHA_C)):
            await _done(store, i, sha)
        await store.record_decision(SHA_A, "approve")
        await store.record_decision(SHA_B, "reject")
        assert store.review_counts() == {"approved": 1, "rejected": 1, "regenerated": 0}


class TestRegenerate:
    async def test_held_units_go_back_to_pending_with_their_seeds(self, store: ReviewedState) -> None:
        await _done(store, 0, SHA_A)
        await _done(store, 1, SHA_B)
        await store.record_decision(SHA_A, "reject")
        assert await store.hold([key(0), key(1), "no-such-unit"]) == {key(0), key(1)}
        assert await store.release([key(1)]) in (0, 1)
        retired = [RetiredRecord(key(0), 1, "rejected", ".rejected/x.png", SHA_A, "job-0", "t")]
        assert await store.regenerate({key(0): "rejected"}, retired, {key(0): 42}) == 1
        rec = store.get(key(0))
        assert rec is not None and (rec.phase, rec.job_id, rec.outputs) == (Phase.PENDING, None, ())
        assert rec.attempts == 1  # the paid attempt still counts
        assert store.retired() == retired
        assert store.resources("seed") == {key(0): {"seed": 42}}
        assert store.review_counts() == {"approved": 0, "rejected": 0, "regenerated": 1}
        assert store.get(key(1)).phase is Phase.DONE

    async def test_a_unit_with_a_job_in_flight_is_refused_and_nothing_changes(
        self, store: ReviewedState
    ) -> None:
        """The lifecycle's table: a regeneration starts from done/succeeded/failed/pending only."""
        await _done(store, 0, SHA_A)
        await store.mark_submitting(key(1))
        await store.mark_submitted(key(1), "job-1")
        await store.hold([key(0), key(1)])
        with pytest.raises(StateError, match="cannot regenerate while submitted"):
            await store.regenerate({key(0): "rejected", key(1): "superseded"}, [], {key(0): 1})
        assert store.get(key(0)).phase is Phase.DONE
        assert store.retired() == [] and store.resources("seed") == {}

    async def test_a_chain_with_a_job_in_flight_is_left_whole(
        self, fresh: Fresh, clock: FakeClock, tmp_path: Path
    ) -> None:
        """A rejected image whose upscale is still being made (a worker has its job): regenerating
        the image now would let that upscale finish from the rejected image, and no later
        regeneration would redo it (its new upstream is not rejected). The chain waits whole."""
        from pipeline.engine.regenerate import apply_regeneration, plan_regeneration
        from pipeline.output.layout import OutputLayout
        from tests.test_review import _done as done_with_files
        from tests.test_review import _unit

        out = tmp_path / "out"
        out.mkdir()
        image, child = _unit("img", "image", "@ava"), _unit("up", "upscale", None, upstream="img")
        video = _unit("vid", "video", None, upstream="img")  # a done sibling: it waits with the chain
        async with fresh() as store:
            await store.sync_units([image, child, video])
            await done_with_files(store, out, image, "c")
            await done_with_files(store, out, video, "d")
            await store.mark_submitting(child.key)
            await store.mark_submitted(child.key, "job-up")
            await store.record_decision("c" * 64, "reject")
            plan = plan_regeneration(store, [image, child, video], {})
            assert await apply_regeneration(plan, store, OutputLayout(out), clock) == 0
            assert store.get(image.key).phase is Phase.DONE and (out / "img" / "image-1.png").is_file()
            assert store.get(video.key).phase is Phase.DONE
            assert store.retired() == [] and plan.credits == 0.0
            assert any("in flight" in why for why in plan.skipped), plan.skipped


class TestSharedDatabaseOnly:
    """A verdict or a regeneration while workers run (PostgreSQL: no run lock)."""

    @pytest.fixture(name="pg")
    def _pg(self, clock: FakeClock, tmp_path: Path, pg_server: PgServer) -> Fresh:
        return Fresh("postgres", clock, tmp_path, pg_server.url())

    async def _worker(self, pg: Fresh, clock: FakeClock) -> Any:
        from pipeline.state.postgres import PostgresStore

        assert pg._url is not None
        return await PostgresStore.open(pg._url, clock=clock, run=pg._run, run_id="w", lease_s=60)

    async def test_a_unit_a_live_worker_holds_is_not_taken(self, pg: Fresh, clock: FakeClock) -> None:
        """The worker holds a succeeded unit (downloading): the regeneration's hold leaves it out,
        a regeneration of it is refused, and the worker's own writes still go through."""
        async with pg() as store:
            await store.sync_units([unit(0), unit(1)])
            worker = await self._worker(pg, clock)
            try:
                claimed = {c.key for c in await worker.claim(1)}
                assert claimed == {key(0)}
                await worker.mark_submitting(key(0))
                await worker.mark_submitted(key(0), "job-0")
                await worker.mark_succeeded(key(0), [("a", "https://cdn/a")])
                await store.record_decision(SHA_A, "reject")  # a verdict touches no unit: always fine
                reviewing: Any = store
                assert await reviewing.hold([key(0), key(1)]) == {key(1)}
                with pytest.raises(LeaseLostError, match="held by"):
                    await reviewing.regenerate({key(0): "rejected"}, [], {})
                await worker.record_download(key(0), 1, path="p", bytes=1, sha256=SHA_A)
                await worker.mark_done(key(0))
                assert store.get(key(0)).phase is Phase.DONE
            finally:
                await worker.aclose()
            # done and let go: now the regeneration may hold it
            assert await reviewing.hold([key(0)]) == {key(0)}
            assert await reviewing.regenerate({key(0): "rejected"}, [], {}) == 1

    async def test_a_held_unit_is_not_claimed_by_workers(self, pg: Fresh, clock: FakeClock) -> None:
        """While a regeneration moves files, workers keep off its units (then claim them pending)."""
        async with pg() as store:
            await store.sync_units([unit(0)])
            reviewing: Any = store
            await store.mark_submitting(key(0))
            await store.mark_submitted(key(0), "job-0")
            await store.mark_succeeded(key(0), [("a", "https://cdn/a")])
            assert await reviewing.hold([key(0)]) == {key(0)}
            worker = await self._worker(pg, clock)
            try:
                assert await worker.claim(5) == []
                await reviewing.regenerate({key(0): "superseded"}, [], {})
                assert [c.key for c in await worker.claim(5)] == [key(0)]
            finally:
                await worker.aclose()

    async def test_two_regenerations_at_once_regenerate_each_unit_once(
        self, pg: Fresh, clock: FakeClock, tmp_path: Path
    ) -> None:
        """Two workers started with ``--regenerate-rejected`` plan the same units: one holds, moves
        and requeues them; the other finds them held (or changed) and leaves them alone."""
        from pipeline.engine.regenerate import apply_regeneration, plan_regeneration
        from pipeline.output.layout import OutputLayout
        from tests.test_review import _done as done_with_files
        from tests.test_review import _unit

        out = tmp_path / "out"
        out.mkdir()
        image, child = _unit("img", "image", "@ava"), _unit("up", "upscale", None, upstream="img")
        async with pg() as a, pg() as b:
            await a.sync_units([image, child])
            await done_with_files(a, out, image, "c")
            await done_with_files(a, out, child, "d")
            await a.record_decision("c" * 64, "reject")
            plans = [plan_regeneration(s, [image, child], {}) for s in (a, b)]
            assert [len(p.targets) for p in plans] == [2, 2]
            changed: list[int] = []

            async def regenerate(plan: Any, store: Any) -> None:
                changed.append(await apply_regeneration(plan, store, OutputLayout(out), clock))

            async with anyio.create_task_group() as tg:
                tg.start_soon(regenerate, plans[0], a)
                tg.start_soon(regenerate, plans[1], b)
            assert sorted(changed) == [0, 2]
            assert sorted(r.unit_key for r in a.retired()) == ["img", "up"]
            assert len(list((out / ".rejected").rglob("*.png"))) == 2
            assert {a.get(k).phase for k in ("img", "up")} == {Phase.PENDING}
            assert set(a.resources("seed")) == {"img"}

    async def test_decisions_belong_to_their_run(self, pg: Fresh, clock: FakeClock) -> None:
        from pipeline.state.postgres import PostgresStore

        assert pg._url is not None
        async with pg() as store:
            await store.record_decision(SHA_A, "approve")
            other = await PostgresStore.open(pg._url, clock=clock, run=pg._run + "-other")
            try:
                assert other.decisions() == {} and other.review_counts()["approved"] == 0
            finally:
                await other.aclose()


async def test_the_review_server_writes_to_the_shared_database(
    clock: FakeClock, tmp_path: Path, pg_server: PgServer
) -> None:
    """``review`` without decisions on the command line: the gallery's clicks go to the run's rows,
    and the page it serves reads them back."""
    import aiohttp

    from pipeline.output.review_server import ReviewServer

    out = tmp_path / "out"
    (out / "item").mkdir(parents=True)
    (out / "item" / "image-1.png").write_bytes(b"\x89PNG")
    pg = Fresh("postgres", clock, tmp_path, pg_server.url())
    async with (
        pg() as store,
        ReviewServer(out, store, token="tok-9") as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(server.url + "api/decisions", json={"sha256": SHA_A, "verdict": "reject"}) as r:
            assert r.status == 200 and (await r.json())["current"]["verdict"] == "reject"
        async with http.get(server.url) as r:
            assert r.status == 200 and SHA_A in await r.text()
        assert store.decisions()[SHA_A].verdict == "reject"


def test_a_shared_state_never_shows_its_password() -> None:
    """What the gallery and ``export`` pass around for a database run: printed, logged or in an
    error, the URL is redacted."""
    where = SharedState("postgresql://u:pw-31x-secret@db:5432/photogpt", "catalog")
    shown = f"{where} {where!r} {[where]}"
    assert "pw-31x-secret" not in shown and "postgresql://u:***@db:5432/photogpt" in shown


def test_review_refuses_a_run_the_database_does_not_have(
    pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``review --run`` with a name no worker ran (a typo, or MANIFEST of another name): exit 2, as
    for a missing state file, instead of verdicts recorded where no regeneration will look."""
    from pipeline.cli.main import main
    from pipeline.state.postgres import PostgresStore

    url = pg_server.create_database(f"rv_{uuid.uuid4().hex[:6]}")

    async def seed() -> None:
        async with await PostgresStore.open(url, clock=FakeClock(), run="catalog") as store:
            await store.sync_units([unit(0)])

    anyio.run(seed)
    out = tmp_path / "out"
    (out / "item").mkdir(parents=True)
    (out / "item" / "image-1.png").write_bytes(b"\x89PNG")
    review = ["review", "--out", str(out), "--state", url, "--approve", "item/image-1.png"]
    assert main([*review, "--run", "catalgo"]) == 2
    assert "catalgo" in capsys.readouterr().err
    with open_view(SharedState(url, "catalgo")) as view:
        assert view.decisions() == {}
    assert main([*review, "--run", "catalog"]) == 0
    with open_view(SharedState(url, "catalog")) as view:
        assert len(view.decisions()) == 1
