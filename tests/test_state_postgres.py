"""The shared PostgreSQL state beyond the common contract: clear errors before anything is sent,
the password kept secret, migrations, several runs in one database, claims with leases and
takeovers, and the API limits shared by every worker, all against a real (throwaway) server."""

from __future__ import annotations

import io
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import psycopg
import pytest
import structlog

from pipeline import logs
from pipeline.clock import FakeClock
from pipeline.errors import LeaseLostError, StateError, StateUnavailableError
from pipeline.state.pgconn import SCHEMA_VERSION, key_hash, migrations, redact_url
from pipeline.state.pglimits import Swept
from pipeline.state.pgreads import open_pg_view
from pipeline.state.postgres import PostgresStore
from pipeline.state.records import Phase
from tests.pg import PASSWORD, PgServer
from tests.test_state import key, unit

Opener = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture(name="run")
def _run() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


@pytest.fixture(name="opened")
async def _opened(pg_server: PgServer, clock: FakeClock, run: str) -> AsyncIterator[Opener]:
    """Opens workers of one run; closes them all at the end."""
    stores: list[PostgresStore] = []

    async def opener(**kwargs: object) -> PostgresStore:
        args: dict[str, object] = {"clock": clock, "run": run, **kwargs}
        store = await PostgresStore.open(pg_server.url(), **args)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.aclose()


def expire(pg_server: PgServer, run: str, holder: str) -> None:
    """End a worker's leases now, as if it had died a lease ago (no test waits for the wall clock)."""
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(
            "UPDATE photogpt.units SET lease_until = clock_timestamp() - interval '1 second'"
            " WHERE run = %s AND holder = %s",
            (run, holder),
        )


class TestRefusals:
    """Bad settings: a clear StateUnavailableError (exit 2) before any API request."""

    async def test_wrong_password_is_clear_and_secret(self, pg_server: PgServer, clock: FakeClock) -> None:
        wrong = "not-the-pass-4c1e9a"
        with pytest.raises(StateUnavailableError, match="wrong user or password") as caught:
            await PostgresStore.open(pg_server.url(password=wrong), clock=clock, run="r")
        assert caught.value.exit_code == 2
        shown = str(caught.value) + repr(caught.value) + "".join(traceback.format_exception(caught.value))
        assert wrong not in shown and f"photogpt:{logs.MASK}@" in str(caught.value)

    async def test_unreachable_database(self, clock: FakeClock) -> None:
        from tests.conftest import refused_port

        with (
            refused_port() as port,
            pytest.raises(StateUnavailableError, match="cannot be reached") as caught,
        ):
            await PostgresStore.open(f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db", clock=clock, run="r")
        assert caught.value.exit_code == 2 and PASSWORD not in str(caught.value)

    async def test_schema_newer_than_this_version(self, pg_server: PgServer, clock: FakeClock) -> None:
        url = pg_server.create_database(f"newer_{uuid.uuid4().hex[:6]}")
        store = await PostgresStore.open(url, clock=clock, run="r")
        await store.aclose()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO photogpt.schema_version VALUES (999, '0999_future.sql', '9.9')")
        with pytest.raises(StateUnavailableError, match="schema version 999") as caught:
            await PostgresStore.open(url, clock=clock, run="r")
        assert caught.value.exit_code == 2 and "left untouched" in str(caught.value)
        with pytest.raises(StateUnavailableError, match="schema version 999"):
            open_pg_view(url, "r")

    async def test_password_stays_out_of_logs_reprs_and_errors(self, opened: Opener) -> None:
        """Debug logs, reprs, error messages: the password shows nowhere (as for the API key)."""
        sink = io.StringIO()
        logs.configure(fmt="json", level="debug", stream=sink)
        store = await opened()
        seen = [repr(store), str(store), redact_url(store._url)]
        for call in (store.mark_submitting("missing"), store.mark_done("missing")):
            try:
                await call
            except StateError as exc:
                seen += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
                structlog.get_logger("test").error("failed", exc_info=exc, url=store._url)
        structlog.get_logger("test").debug("dsn", note=f"connecting to {store._url}")
        text = sink.getvalue() + "\n".join(seen)
        assert "connecting to" in text and PASSWORD not in text

    def test_redaction_of_urls_and_conninfo(self) -> None:
        assert (
            redact_url("postgresql://u:s3cr3t@h:5/db?sslmode=require")
            == "postgresql://u:***@h:5/db?sslmode=require"
        )
        assert redact_url("postgresql://h/db?password=s3cr3t&x=1") == "postgresql://h/db?password=***&x=1"
        assert redact_url("host=h password='a b' user=u") == "host=h password=*** user=u"


class TestSchema:
    async def test_migrations_ship_with_the_package_and_are_recorded(
        self, pg_server: PgServer, clock: FakeClock
    ) -> None:
        assert [n for n, _, _ in migrations()] == list(range(1, SCHEMA_VERSION + 1))
        url = pg_server.create_database(f"fresh_{uuid.uuid4().hex[:6]}")
        async with await PostgresStore.open(url, clock=clock, run="a"):
            pass
        async with await PostgresStore.open(url, clock=clock, run="a"):  # twice: nothing to do
            pass
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT version, name FROM photogpt.schema_version").fetchall()
        assert sorted(rows) == [(n, name) for n, name, _ in migrations()]
        assert rows[0] == (1, "0001_initial.sql")

    async def test_a_version_1_database_gets_the_review_tables(
        self, pg_server: PgServer, clock: FakeClock
    ) -> None:
        """A database a version-1 photogpt-pipeline made: the next open adds the review and sweep parts."""
        url = pg_server.create_database(f"v1_{uuid.uuid4().hex[:6]}")
        async with await PostgresStore.open(url, clock=clock, run="a"):
            pass
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE photogpt.decisions, photogpt.retired")
            conn.execute("ALTER TABLE photogpt.job_status DROP COLUMN created_at, DROP COLUMN credits")
            conn.execute("ALTER TABLE photogpt.api_limits DROP COLUMN req_tat, DROP COLUMN api_requests")
            conn.execute("DELETE FROM photogpt.schema_version WHERE version >= 2")
        async with await PostgresStore.open(url, clock=clock, run="a") as store:
            await store.record_decision("a" * 64, "approve")
            assert list(store.decisions()) == ["a" * 64]

    async def test_a_version_1_database_still_reads(self, pg_server: PgServer, clock: FakeClock) -> None:
        """``status``, ``review --json``, ``export --only approved`` and the gallery open a read-only
        view, which migrates nothing: on a database only older workers have opened (no review tables
        yet) they read "no verdicts", not a database error."""
        url = pg_server.create_database(f"v1r_{uuid.uuid4().hex[:6]}")
        async with await PostgresStore.open(url, clock=clock, run="a") as store:
            await store.sync_units([unit(0)])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE photogpt.decisions, photogpt.retired")
            conn.execute("ALTER TABLE photogpt.job_status DROP COLUMN created_at, DROP COLUMN credits")
            conn.execute("ALTER TABLE photogpt.api_limits DROP COLUMN req_tat, DROP COLUMN api_requests")
            conn.execute("DELETE FROM photogpt.schema_version WHERE version >= 2")
        with open_pg_view(url, "a") as view:
            assert view.counts()[Phase.PENDING] == 1
            assert view.decisions() == {}
            assert view.retired() == []
            assert view.review_counts() == {"approved": 0, "rejected": 0, "regenerated": 0}

    async def test_several_runs_share_one_database(self, pg_server: PgServer, clock: FakeClock) -> None:
        """Two manifests, same unit keys, one database: each run sees only its own units."""
        a = await PostgresStore.open(pg_server.url(), clock=clock, run=f"a-{uuid.uuid4().hex[:6]}")
        b = await PostgresStore.open(pg_server.url(), clock=clock, run=f"b-{uuid.uuid4().hex[:6]}")
        try:
            await a.sync_units([unit(0), unit(1)])
            await b.sync_units([unit(0)])
            await a.mark_submitting(key(0))
            await a.mark_submitted(key(0), "job-x")
            await b.mark_submitting(key(0))
            assert len(a.phases()) == 2 and len(b.phases()) == 1
            assert b.get(key(0)).phase is Phase.SUBMITTING and b.job_ids() == set()  # type: ignore[union-attr]
        finally:
            await a.aclose()
            await b.aclose()


class TestClaims:
    async def test_workers_split_the_units(self, opened: Opener) -> None:
        a, b = await opened(lease_s=60), await opened(lease_s=60)
        await a.sync_units(unit(i) for i in range(10))
        mine, theirs = await a.claim(4), await b.claim(100)
        assert len(mine) == 4 and len(theirs) == 6
        assert {c.key for c in mine}.isdisjoint({c.key for c in theirs})
        assert await a.claim(10) == []
        held = {u.key: u.holder for u in a.units()}
        assert Counter(held.values()) == {a.holder: 4, b.holder: 6}
        assert sorted(n for _, n, _ in a.holders()) == [4, 6]

    async def test_concurrent_claimers_never_share_a_unit(self, opened: Opener) -> None:
        """8 workers claim 7 at a time until nothing is left: every unit exactly once."""
        workers = [await opened(lease_s=60) for _ in range(8)]
        await workers[0].sync_units(unit(i) for i in range(300))
        got: list[str] = []

        async def drain(w: PostgresStore) -> None:
            while batch := await w.claim(7):
                got.extend(c.key for c in batch)

        async with anyio.create_task_group() as tg:
            for w in workers:
                tg.start_soon(drain, w)
        assert len(got) == 300 and len(set(got)) == 300

    async def test_writes_need_a_live_claim(self, pg_server: PgServer, opened: Opener, run: str) -> None:
        """A worker whose lease ran out and was taken over cannot write; the new holder can."""
        a, b = await opened(lease_s=60), await opened(lease_s=60)
        await a.sync_units([unit(0), unit(1)])
        with pytest.raises(LeaseLostError, match="held by nobody"):
            await a.mark_submitting(key(0))  # cooperating workers write only what they hold
        await a.claim(1)
        assert await a.mark_submitting(key(0)) == 1
        await a.mark_submitted(key(0), "job-0")
        expire(pg_server, run, a.holder)
        with pytest.raises(LeaseLostError):
            await a.mark_failed(key(0), "late", "x")  # expired, not yet taken: still refused
        taken = await b.claim(5)
        assert [(c.key, c.taken_from, c.must_reconcile) for c in taken] == [
            (key(0), a.holder, False), (key(1), None, False),
        ]  # fmt: skip
        with pytest.raises(LeaseLostError):
            await a.mark_succeeded(key(0), [("a", "https://cdn/a")])
        await b.mark_succeeded(key(0), [("a", "https://cdn/a")])
        assert await a.renew() == set() and await b.renew() == {key(0), key(1)}
        assert "taken over from" in b.history(key(0))[-1].detail

    async def test_submitting_taken_over_goes_to_reconcile(
        self, pg_server: PgServer, opened: Opener, run: str
    ) -> None:
        """The holder died between intent and job id: no new POST before reconciling."""
        a, b = await opened(lease_s=60), await opened(lease_s=60)
        await a.sync_units([unit(0), unit(1)])
        await a.claim(2)
        await a.mark_submitting(key(0))
        await a.mark_submitting(key(1))
        expire(pg_server, run, a.holder)
        taken = {c.key: c for c in await b.claim(5)}
        assert taken[key(0)].must_reconcile and taken[key(0)].phase is Phase.SUBMITTING
        with pytest.raises(StateError, match="cannot mark submitting while submitting"):
            await b.mark_submitting(key(0))
        await b.mark_submitted(key(0), "job-found-in-list")  # reconciled: one job found, adopted
        await b.mark_pending(key(1), "reconciled: no job in its window")  # nothing created
        assert await b.mark_submitting(key(1)) == 2

    async def test_a_takeover_claims_only_expired_leases(
        self, pg_server: PgServer, opened: Opener, run: str
    ) -> None:
        """The mid-batch takeover look takes a dead worker's units, never the free ones."""
        a, b = await opened(lease_s=60), await opened(lease_s=60)
        await a.sync_units(unit(i) for i in range(4))
        await a.claim(2)
        assert await b.claim(5, expired_only=True) == []  # a is alive; the free units wait
        expire(pg_server, run, a.holder)
        taken = await b.claim(5, expired_only=True)
        assert [(c.key, c.taken_from) for c in taken] == [(key(0), a.holder), (key(1), a.holder)]

    async def test_a_dead_workers_intents_go_to_one_worker_together(
        self, pg_server: PgServer, opened: Opener, run: str
    ) -> None:
        """Reconciling needs every uncertain intent at once: claiming one orphan claims them all."""
        a, b, c = await opened(lease_s=60), await opened(lease_s=60), await opened(lease_s=60)
        await a.sync_units(unit(i) for i in range(6))
        await a.claim(6)
        for i in (0, 2, 4):
            await a.mark_submitting(key(i))
        assert await b.others_submitting([]) == 3  # a's POSTs are in flight: b must not reconcile now
        expire(pg_server, run, a.holder)
        got = {x.key: x.must_reconcile for x in await b.claim(1)}
        assert got == {key(0): True, key(2): True, key(4): True}
        assert {x.key for x in await c.claim(10)} == {key(1), key(3), key(5)}
        assert await c.others_submitting([]) == 0  # units waiting to be reconciled are no POSTs
        await c.mark_submitting(key(1))  # c's POST in flight, in one of its batches
        assert await c.others_submitting([], batch=[key(1), key(3)]) == 0  # its own batch: the run knows
        assert await c.others_submitting([], batch=[key(3)]) == 1  # another batch of c's: wait for it

    async def test_exclusive_store_keeps_off_held_units(self, opened: Opener) -> None:
        """A store opened without a lease (one process, as with SQLite) cannot write a held unit."""
        worker, alone = await opened(lease_s=60), await opened()
        await worker.sync_units([unit(0), unit(1)])
        await worker.claim(1)
        with pytest.raises(LeaseLostError):
            await alone.mark_submitting(key(0))
        assert await alone.mark_submitting(key(1)) == 1

    async def test_progress_tells_when_to_exit(self, opened: Opener) -> None:
        a, b = await opened(lease_s=60), await opened(lease_s=60)
        await a.sync_units([unit(0), unit(1)])
        await a.claim(1)
        assert (await b.progress()).held_by_others == 1
        await a.mark_failed(key(0), "bad", "rejected")
        await b.claim(5)
        await b.mark_failed(key(1), "bad", "rejected")
        assert (await a.progress()).settled and a.get(key(0)).holder is None  # type: ignore[union-attr]


class TestSharedLimits:
    async def test_active_cap_holds_under_concurrency(self, opened: Opener) -> None:
        """6 workers race to start 60 submissions under a cap of 5: exactly 5 intents, never more."""
        kh = key_hash(f"sk-{uuid.uuid4().hex}")
        workers = [await opened(lease_s=60) for _ in range(6)]
        await workers[0].sync_units(unit(i) for i in range(60))
        started: list[str] = []

        async def work(w: PostgresStore) -> None:
            for c in await w.claim(10):
                if await w.start_submission(c.key, key_hash=kh, cap=5) is not None:
                    started.append(c.key)
                    await w.mark_submitted(c.key, f"job-{c.key}")

        async with anyio.create_task_group() as tg:
            for w in workers:
                tg.start_soon(work, w)
        assert len(started) == 5 and await workers[0].limits(kh).active() == 5
        await workers[0].limits(kh).learn(cap=3)  # a 429 taught one worker a lower cap: all obey
        for w in workers:
            await w.release(u.key for u in w.units(Phase.PENDING))
        rest = await workers[1].claim(60)
        assert all([await workers[1].start_submission(c.key, key_hash=kh, cap=64) for c in rest]) is False
        assert await workers[1].limits(kh).active() == 5

    async def test_few_posts_in_flight_before_the_cap_is_known(self, opened: Opener) -> None:
        """Cap 64: at most 8 intents without a job id at once, so meeting an unknown server cap
        costs a handful of 429s, not dozens."""
        kh = key_hash(f"sk-{uuid.uuid4().hex}")
        w = await opened(lease_s=60)
        await w.sync_units(unit(i) for i in range(20))
        claimed = await w.claim(20)
        granted = [c.key for c in claimed if await w.start_submission(c.key, key_hash=kh, cap=64) is not None]
        assert len(granted) == 8
        await w.mark_submitted(granted[0], "job-a")
        assert await w.start_submission(claimed[8].key, key_hash=kh, cap=64) == 1

    async def test_one_gcra_row_paces_every_worker(self, opened: Opener) -> None:
        """4 workers reserve 20 requests at 10 req/s: the waits they are given are 0.1 s apart."""
        kh = key_hash(f"sk-{uuid.uuid4().hex}")
        workers = [await opened() for _ in range(4)]
        await workers[0].limits(kh).configure(rate_per_s=10)
        waits: list[float] = []

        async def charge(w: PostgresStore) -> None:
            for _ in range(5):
                waits.append(await w.limits(kh).reserve())

        async with anyio.create_task_group() as tg:
            for w in workers:
                tg.start_soon(charge, w)
        waits.sort()
        assert waits[0] == 0.0 and 1.5 < waits[-1] < 2.0  # 20 requests take ~2 s at 10/s, together
        assert (await workers[0].limits(kh).read()).requests == 20
        await workers[1].limits(kh).learn(rate_per_s=5.0)
        assert (await workers[2].limits(kh).read()).rate == 5.0

    async def test_one_sweeper_per_key(self, pg_server: PgServer, opened: Opener) -> None:
        kh = key_hash(f"sk-{uuid.uuid4().hex}")
        a, b = await opened(), await opened()
        assert await a.limits(kh).lead_sweeps(60) and not await b.limits(kh).lead_sweeps(60)
        assert await a.limits(kh).lead_sweeps(60)  # the sweeper renews its lease
        await a.limits(kh).publish({"job-1": "running", "job-2": "completed"})
        assert await b.limits(kh).statuses(["job-2", "job-3"], max_age_s=60) == {"job-2": "completed"}
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute(
                "UPDATE photogpt.sweeper SET lease_until = clock_timestamp() WHERE key_hash = %s", (kh,)
            )
        assert await b.limits(kh).lead_sweeps(60) and not await a.limits(kh).lead_sweeps(60)
        assert await a.limits(kh).swept(["job-2"], max_age_s=60) == {"job-2": Swept("completed")}
        await b.limits(kh).resign_sweeps()  # b exits: nobody sweeps, each worker lists for itself
        assert await a.limits(kh).sweeper() is None
        assert await a.limits(kh).swept(["job-2"], max_age_s=60) is None


class TestChoosing:
    async def test_a_url_opens_postgres_and_a_path_sqlite(
        self, pg_server: PgServer, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--state URL, $PHOTOGPT_STATE_URL, or the default file: the factory picks the store."""
        from pipeline.state.opening import open_store, resolve_state
        from pipeline.state.sqlite import SqliteStore

        default = tmp_path / "state.db"
        monkeypatch.delenv("PHOTOGPT_STATE_URL", raising=False)
        assert resolve_state(None, default) == default
        assert resolve_state(str(tmp_path / "x.db"), default) == tmp_path / "x.db"
        monkeypatch.setenv("PHOTOGPT_STATE_URL", pg_server.url())
        assert resolve_state(None, default) == pg_server.url()
        shared = await open_store(pg_server.url(), clock=clock, run_name="choose")
        local = await open_store(default, clock=clock, linger_s=0)
        try:
            assert isinstance(shared, PostgresStore) and isinstance(local, SqliteStore)
        finally:
            await shared.aclose()
            await local.aclose()
