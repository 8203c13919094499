"""The cooperating worker's shared limits, against the throwaway PostgreSQL: ``--rate`` and
``--max-active`` are totals for the API key, whatever the number of workers."""

from __future__ import annotations

import time
import uuid

import anyio

from pipeline.clock import FakeClock, SystemClock
from pipeline.engine.cooperate import SharedStore
from pipeline.state.pgconn import key_hash
from pipeline.state.records import CAP_429_REASON, Phase
from tests.pg import PgServer
from tests.test_state import key, unit


async def test_rate_is_a_total_for_the_key(pg_server: PgServer) -> None:
    """Two workers, --rate 50 each: 20 submissions between them take about 0.4 s, not 0.2 s."""
    kh, run = key_hash(f"sk-{uuid.uuid4().hex}"), f"r-{uuid.uuid4().hex[:6]}"
    clock = SystemClock()
    stores = [await SharedStore.open(pg_server.url(), clock=clock, run=run) for _ in range(2)]
    try:
        for s in stores:
            await s.share_limits(kh, cap=64, rate_per_s=50)
        started = time.monotonic()

        async def submit(s: SharedStore) -> None:
            assert s.submit_limiter is not None
            for _ in range(10):
                await s.submit_limiter.acquire()

        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(submit, s)
        assert time.monotonic() - started >= 0.35  # 19 gaps of 20 ms: paced together
        assert (await stores[0].limits(kh).read()).requests == 20
    finally:
        for s in stores:
            await s.aclose()


async def test_a_cap_refusal_teaches_every_worker(pg_server: PgServer) -> None:
    """A 429 for the cap while 3 jobs run: every worker's intents stop at 3 from then on."""
    kh, run, clock = key_hash(f"sk-{uuid.uuid4().hex}"), f"r-{uuid.uuid4().hex[:6]}", FakeClock()
    a = await SharedStore.open(pg_server.url(), clock=clock, run=run, lease_s=60)
    b = await SharedStore.open(pg_server.url(), clock=clock, run=run, lease_s=60)
    try:
        for s in (a, b):
            await s.share_limits(kh, cap=64, rate_per_s=None)
        await a.sync_units(unit(i) for i in range(8))
        await a.claim(4)
        await b.claim(4)
        for i in range(3):
            await a.mark_submitting(key(i))
            await a.mark_submitted(key(i), f"job-{i}")
        await a.mark_submitting(key(3))
        await a.mark_pending(key(3), CAP_429_REASON)  # the server said: too many active jobs
        assert (await b.limits(kh).read()).learned_cap == 3
        assert await b.start_submission(key(4), key_hash=kh, cap=64) is None
        await a.mark_succeeded(key(0), [("a", "https://cdn/a")])  # one job finished: a slot frees
        assert await b.mark_submitting(key(4)) == 1
        assert b.get(key(4)).phase is Phase.SUBMITTING  # type: ignore[union-attr]
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_request_rate_learned_from_poll_429s_paces_every_worker(pg_server: PgServer) -> None:
    """Worker A measures the server's rate between two refused GETs while B sends as much: A got
    half the key's requests through, so the key's rate is twice A's measure; B adopts it without
    ever seeing a 429, and the key's requests are paced together from then on."""
    from pipeline.engine.sharedpace import SharedPacer

    kh, run, clock = key_hash(f"sk-{uuid.uuid4().hex}"), f"r-{uuid.uuid4().hex[:6]}", FakeClock()
    stores = [await SharedStore.open(pg_server.url(), clock=clock, run=run) for _ in range(2)]
    try:
        a, b = (SharedPacer(s.limits(kh), clock=clock) for s in stores)

        async def send(p: SharedPacer, status: int = 200) -> None:
            await p.acquire()
            p.on_answer("GET", status)

        for _ in range(3):
            await send(a)
        await send(a, 429)  # the first refused GET: A starts measuring
        assert a.learning
        for _ in range(10):
            await send(a)
            await send(b)  # B's requests come out of the same bucket
        clock.advance(0.5)
        await send(a, 429)  # the second: A's rate is what it got through in between
        measured = a.rate
        assert a.calibrations == 1 and measured is not None
        await send(a)  # shares it
        learned = (await stores[1].limits(kh).read()).learned_rate
        assert learned is not None and 1.6 * measured < learned < 2.4 * measured
        await send(b)  # B never saw a 429, yet paces at the key's rate
        assert b.rate == learned == a.rate
        first, second = await b._limits.charge_request(), await a._limits.charge_request()
        assert first.wait_s >= 0 and second.wait_s > 0.5 / learned  # one GCRA for both workers
    finally:
        for s in stores:
            await s.aclose()
