"""The ``StateStore`` contract, written once and run over every implementation: the SQLite file
and the PostgreSQL database (a throwaway server started by tests/pg.py).

A new implementation joins by adding one branch to the ``fresh`` fixture."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from pipeline.clock import FakeClock
from pipeline.errors import StateError
from pipeline.state.lifecycle import PERSISTED
from pipeline.state.records import Phase
from pipeline.state.store import StateStore
from tests.test_state import Unit, key, unit


class Fresh:
    """Opens stores of one implementation (one database run or file per test)."""

    def __init__(self, kind: str, clock: FakeClock, tmp_path: Path, pg_url: str | None) -> None:
        self.kind, self._clock, self._tmp, self._url = kind, clock, tmp_path, pg_url
        self._run = f"run-{uuid.uuid4().hex[:8]}"

    async def open(self) -> StateStore:
        if self.kind == "sqlite":
            from pipeline.state.sqlite import SqliteStore

            # No lingering: a FakeClock's waits advance it, and these tests pin exact timestamps.
            return await SqliteStore.open(
                self._tmp / "state.db", clock=self._clock, run_id="run-1", linger_s=0
            )
        from pipeline.state.postgres import PostgresStore

        assert self._url is not None
        return await PostgresStore.open(self._url, clock=self._clock, run=self._run, run_id="run-1")

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[StateStore]:
        store = await self.open()
        try:
            yield store
        finally:
            await store.aclose()


@pytest.fixture(name="fresh", params=["sqlite", "postgres"])
def _fresh(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Fresh:
    url = request.getfixturevalue("pg_server").url() if request.param == "postgres" else None
    return Fresh(request.param, clock, tmp_path, url)


@pytest.fixture(name="store")
async def _store(fresh: Fresh) -> AsyncIterator[StateStore]:
    async with fresh() as store:
        await store.sync_units([unit(i) for i in range(5)])
        yield store


def test_the_store_satisfies_the_protocol(store: StateStore) -> None:
    """The seam is a typing Protocol (mypy checks it in pipeline/state/opening.py); at runtime too."""
    assert isinstance(store, StateStore)


class TestLifecycle:
    async def test_every_phase_in_order(self, store: StateStore, clock: FakeClock) -> None:
        """pending → submitting → submitted → succeeded → done, with clock timestamps and outputs."""
        k = key(0)
        assert store.get(k) is not None and store.get(k).phase is Phase.PENDING  # type: ignore[union-attr]
        clock.advance(1)
        assert await store.mark_submitting(k) == 1
        clock.advance(1)
        await store.mark_submitted(k, "job-1")
        clock.advance(60)
        await store.mark_succeeded(k, [("asset-a", "https://cdn/a.png"), ("asset-b", "https://cdn/b.png")])
        mid = store.get(k)
        assert mid is not None and mid.phase is Phase.SUCCEEDED
        assert [(o.n, o.asset_id, o.downloaded) for o in mid.outputs] == [
            (1, "asset-a", False), (2, "asset-b", False),
        ]  # fmt: skip
        for n in (1, 2):
            await store.record_download(k, n, path=f"out/{n}.png", bytes=100 + n, sha256="ab" * 32)
        clock.advance(1)
        await store.mark_done(k)
        rec = store.get(k)
        assert rec is not None
        assert (rec.phase, rec.job_id, rec.attempts, rec.run_id) == (Phase.DONE, "job-1", 1, "run-1")
        assert rec.submitted_at == "2026-01-01T00:00:02.000Z"
        assert rec.finished_at == "2026-01-01T00:01:02.000Z"
        assert rec.updated_at == "2026-01-01T00:01:03.000Z"
        assert [o.bytes for o in rec.outputs] == [101, 102] and all(o.downloaded for o in rec.outputs)
        assert rec.request == {"prompt": "photo 0", "n": 1}
        assert [(e.phase, e.detail) for e in store.history(k)] == [
            (Phase.SUBMITTING, "intent"), (Phase.SUBMITTED, "job job-1"),
        ]  # fmt: skip

    async def test_rate_limited_goes_back_to_pending_keeping_attempts(self, store: StateStore) -> None:
        """A 429 created nothing: back to pending with the reason; attempts still count the POST."""
        await store.mark_submitting(key(1))
        await store.mark_pending(key(1), "429 too many active jobs")
        rec = store.get(key(1))
        assert rec is not None and (rec.phase, rec.attempts, rec.last_error) == (
            Phase.PENDING, 1, "429 too many active jobs",
        )  # fmt: skip
        assert await store.mark_submitting(key(1)) == 2

    async def test_a_second_intent_needs_proof_that_nothing_was_created(self, store: StateStore) -> None:
        """A unit whose POST may have left is never sent again directly (the API has no idempotency
        key): only back in ``pending`` (a refusal, or the job list showing nothing) may it POST again,
        and attempts count every intent."""
        assert await store.mark_submitting(key(1)) == 1
        with pytest.raises(StateError, match="cannot mark submitting while submitting"):
            await store.mark_submitting(key(1))
        await store.mark_pending(key(1), "429 rate limited")
        assert await store.mark_submitting(key(1)) == 2

    @pytest.mark.parametrize("phase", sorted(PERSISTED - {Phase.PENDING, Phase.REJECTED, Phase.SUPERSEDED}))
    async def test_never_submits_twice(self, store: StateStore, phase: Phase) -> None:
        """Once a job id exists, or the unit is parked, a new intent is refused: that would pay twice."""
        k = key(2)
        await store.mark_submitting(k)
        if phase is Phase.UNKNOWN:
            await store.mark_unknown(k, "died mid-POST")
        elif phase is not Phase.SUBMITTING:  # submitting: the intent above, whose POST may have left
            await store.mark_submitted(k, "job-2")
        if phase in (Phase.SUCCEEDED, Phase.DONE):
            await store.mark_succeeded(k, [("a", "https://cdn/a")])
        if phase is Phase.DONE:
            await store.record_download(k, 1, path="a", bytes=1, sha256="00" * 32)
            await store.mark_done(k)
        if phase is Phase.FAILED:
            await store.mark_failed(k, "job failed remotely", "remote")
        with pytest.raises(StateError, match=f"cannot mark submitting while {phase}"):
            await store.mark_submitting(k)
        rec = store.get(k)
        assert rec is not None and rec.phase is phase and rec.attempts == 1

    async def test_job_id_is_recorded_once(self, store: StateStore) -> None:
        """The same job id again is a no-op; another id, or an id owned by another unit, is refused."""
        await store.mark_submitting(key(0))
        await store.mark_submitted(key(0), "job-0")
        await store.mark_submitted(key(0), "job-0")
        with pytest.raises(StateError, match="cannot record a job id while submitted"):
            await store.mark_submitted(key(0), "job-other")
        await store.mark_submitting(key(1))
        with pytest.raises(StateError, match="already belongs to unit"):
            await store.mark_submitted(key(1), "job-0")
        assert [e.phase for e in store.history(key(0))] == [Phase.SUBMITTING, Phase.SUBMITTED]

    async def test_done_needs_every_download(self, store: StateStore) -> None:
        """A unit cannot be closed while an output is missing; unknown outputs are refused."""
        await store.mark_submitting(key(3))
        await store.mark_submitted(key(3), "job-3")
        await store.mark_succeeded(key(3), [("a", "https://cdn/a"), ("b", "https://cdn/b")])
        await store.record_download(key(3), 1, path="a", bytes=1, sha256="00" * 32)
        with pytest.raises(StateError, match=r"outputs \[2\] are not downloaded"):
            await store.mark_done(key(3))
        with pytest.raises(StateError, match="has no output 3"):
            await store.record_download(key(3), 3, path="c", bytes=1, sha256="00" * 32)
        with pytest.raises(StateError, match="at least one output"):
            await store.mark_succeeded(key(3), [])

    async def test_the_last_download_closes_the_unit_in_the_same_change(self, store: StateStore) -> None:
        """record_download(done=True) closes the unit; while an output is missing it is refused whole."""
        await store.mark_submitting(key(4))
        await store.mark_submitted(key(4), "job-4b")
        await store.mark_succeeded(key(4), [("a", "https://cdn/a"), ("b", "https://cdn/b")])
        with pytest.raises(StateError, match=r"outputs \[2\] are not downloaded"):
            await store.record_download(key(4), 1, path="a", bytes=1, sha256="00" * 32, done=True)
        assert [o.downloaded for o in store.get(key(4)).outputs] == [False, False]  # type: ignore[union-attr]
        await store.record_download(key(4), 1, path="a", bytes=1, sha256="00" * 32)
        await store.record_download(key(4), 2, path="b", bytes=1, sha256="00" * 32, done=True)
        rec = store.get(key(4))
        assert rec is not None and rec.phase is Phase.DONE
        assert [o.path for o in rec.outputs] == ["a", "b"]

    async def test_fresh_urls_replace_expired_ones(self, store: StateStore) -> None:
        """update_urls swaps URLs for the same assets and keeps what was downloaded."""
        await store.mark_submitting(key(4))
        await store.mark_submitted(key(4), "job-4")
        await store.mark_succeeded(key(4), [("a", "https://cdn/a?sig=old"), ("b", "https://cdn/b?sig=old")])
        await store.record_download(key(4), 1, path="a", bytes=1, sha256="00" * 32)
        await store.update_urls(key(4), [("a", "https://cdn/a?sig=new"), ("b", "https://cdn/b?sig=new")])
        rec = store.get(key(4))
        assert rec is not None
        assert [(o.url, o.downloaded) for o in rec.outputs] == [
            ("https://cdn/a?sig=new", True), ("https://cdn/b?sig=new", False),
        ]  # fmt: skip
        with pytest.raises(StateError, match="do not match"):
            await store.update_urls(key(4), [("x", "https://cdn/x")])

    async def test_unknown_key_is_a_state_error(self, store: StateStore) -> None:
        """Mutating a unit that was never synced names the key."""
        with pytest.raises(StateError, match="no unit with key 'nope'"):
            await store.mark_submitting("nope")
        assert store.get("nope") is None

    async def test_failed_and_unknown_reset_to_pending(self, store: StateStore) -> None:
        """--retry-failed and --resubmit-unknown: only the chosen units, job id and outputs forgotten."""
        for i in (0, 1, 2):
            await store.mark_submitting(key(i))
        await store.mark_submitted(key(0), "job-0")
        await store.mark_failed(key(0), "moderation", "rejected")
        await store.mark_unknown(key(1), "timeout after POST")
        await store.mark_unknown(key(2), "timeout after POST")
        await store.mark_failed(key(3), "upstream failed", "upstream")
        assert await store.reset(Phase.FAILED) == 2
        assert await store.reset(Phase.UNKNOWN, keys=[key(2), key(0)]) == 1
        phases = store.phases()
        assert [phases[key(i)] for i in range(4)] == [
            Phase.PENDING, Phase.UNKNOWN, Phase.PENDING, Phase.PENDING,
        ]  # fmt: skip
        rec = store.get(key(0))
        assert rec is not None
        assert (rec.job_id, rec.last_error, rec.attempts, rec.outputs) == (None, None, 1, ())
        assert "reset from failed: moderation" in store.history(key(0))[-1].detail
        with pytest.raises(StateError, match="failed or unknown"):
            await store.reset(Phase.DONE)


class TestSync:
    async def test_sync_is_idempotent_and_leaves_rows_alone(self, store: StateStore) -> None:
        """A rerun syncs the same manifest: nothing added, phases and stored requests untouched."""
        await store.mark_submitting(key(0))
        changed = Unit(key(0), "item-0000", "image", 1, {"prompt": "edited"})
        assert await store.sync_units([changed, unit(1), unit(7)]) == 1
        rec = store.get(key(0))
        assert rec is not None and rec.phase is Phase.SUBMITTING and rec.request["prompt"] == "photo 0"
        assert store.counts() == {p: {Phase.PENDING: 5, Phase.SUBMITTING: 1}.get(p, 0) for p in Phase}

    async def test_units_are_ordered_and_filtered(self, fresh: Fresh) -> None:
        """units() orders by item, step, index; phase filters; upstream is kept."""
        async with fresh() as store:
            units = [
                Unit(key(3), "b", "video", 1, upstream=key(2)),
                Unit(key(2), "b", "image", 2),
                Unit(key(1), "b", "image", 1),
                Unit(key(0), "a", "upscale", 1, expected_outputs=4),
            ]
            assert await store.sync_units(iter(units)) == 4
            await store.mark_submitting(key(1))
            assert [u.key for u in store.units()] == [key(0), key(1), key(2), key(3)]
            assert [u.key for u in store.units(Phase.SUBMITTING)] == [key(1)]
            got = store.get(key(3))
            assert got is not None and (got.upstream, got.step, got.index) == (key(2), "video", 1)
            assert store.get(key(0)).expected_outputs == 4  # type: ignore[union-attr]

    async def test_stale_units_are_reported_never_deleted(self, store: StateStore) -> None:
        """Units the manifest dropped are listed; their rows stay (they may be paid for)."""
        stale = store.stale_keys({key(0), key(1), key(2)})
        assert [u.key for u in stale] == [key(3), key(4)]
        assert len(store.phases()) == 5

    async def test_a_request_that_is_not_json_is_refused(self, store: StateStore) -> None:
        """A bad request body is a StateError and adds nothing, not a TypeError from json."""
        with pytest.raises(StateError, match="refused"):
            await store.sync_units([unit(9), Unit(key(10), "x", "image", 1, {"bad": object()})])
        assert store.get(key(9)) is None


class TestConcurrency:
    async def test_concurrent_intents_are_all_recorded(self, fresh: Fresh) -> None:
        """200 concurrent mark_submitting: every one recorded once when they return."""
        async with fresh() as store:
            await store.sync_units(unit(i) for i in range(200))
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(store.mark_submitting, key(i))
            assert store.counts()[Phase.SUBMITTING] == 200
            assert {u.attempts for u in store.units()} == {1}

    async def test_a_refused_change_does_not_sink_its_batch(self, store: StateStore) -> None:
        """One bad change in a batch raises for its caller only; the others commit."""
        errors: list[str] = []

        async def submit(k: str) -> None:
            try:
                await store.mark_submitting(k)
            except StateError as exc:
                errors.append(str(exc))

        async with anyio.create_task_group() as tg:
            for k in [key(0), "missing", key(1), key(2)]:
                tg.start_soon(submit, k)
        assert len(errors) == 1 and "missing" in errors[0]
        assert store.counts()[Phase.SUBMITTING] == 3

    async def test_closed_store_refuses_work(self, fresh: Fresh) -> None:
        """After aclose, mutators and reads raise StateError; closing twice is harmless."""
        store = await fresh.open()
        await store.sync_units([unit(0)])
        await store.aclose()
        await store.aclose()
        with pytest.raises(StateError, match="closed"):
            await store.mark_submitting(key(0))
        with pytest.raises(StateError):
            store.counts()

    async def test_many_units_sync_at_once(self, fresh: Fresh) -> None:
        """5,000 units in one sync; phases() and counts() see all of them."""
        async with fresh() as store:
            assert await store.sync_units(unit(i) for i in range(5_000)) == 5_000
            assert len(store.phases()) == 5_000 and store.counts()[Phase.PENDING] == 5_000
