"""Throttling in virtual time: GCRA spacing, the global pause, and the AIMD cap on active jobs.

Sequential code runs on ``FakeClock``; concurrent waiters need ``VirtualClock``,
whose time jumps only when every task is blocked. Nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from pipeline.clock import FakeClock
from pipeline.engine.limits import ActiveJobLimit, RateLimiter, RequestPacer
from pipeline.engine.retry import RetryPolicy, retrying
from pipeline.errors import RateLimitedError
from tests.virtual_clock import VirtualClock


class NoSleepClock(FakeClock):
    """A FakeClock that fails the test if anything sleeps on it."""

    async def sleep(self, seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s")


async def _gather(*fns: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Start ``fns`` in order (so they arrive in order) and wait for all."""
    async with anyio.create_task_group() as tg:
        for fn in fns:
            tg.start_soon(fn)


class TestVirtualClock:
    """The proposed clock these tests run on (``tests/virtual_clock.py``)."""

    async def test_concurrent_sleepers_share_time(self) -> None:
        """Two tasks sleeping 1 s together end at t=1 (FakeClock would say t=2); order is by due time."""
        clock = VirtualClock()
        woke: list[tuple[str, float]] = []

        async def nap(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.monotonic()))

        async with clock.autojump(), anyio.create_task_group() as tg:
            tg.start_soon(nap, "b", 2.0)
            tg.start_soon(nap, "a1", 1.0)
            tg.start_soon(nap, "a2", 1.0)
        assert woke == [("a1", 1.0), ("a2", 1.0), ("b", 2.0)]

    async def test_wait_for_returns_on_the_event_or_the_timeout(self) -> None:
        """``wait_for`` ends when the event is set, else at its timeout; a dropped timer moves no time."""
        clock = VirtualClock()
        event = anyio.Event()
        results: list[tuple[bool, float]] = []

        async def setter() -> None:
            await clock.sleep(3.0)
            event.set()

        async with clock.autojump(), anyio.create_task_group() as tg:
            results.append((await clock.wait_for(anyio.Event(), 2.0), clock.monotonic()))
            tg.start_soon(setter)
            results.append((await clock.wait_for(event, 100.0), clock.monotonic()))
        assert results == [(False, 2.0), (True, 5.0)]
        assert clock.monotonic() == 5.0

    async def test_advance_by_hand_wakes_due_sleepers(self) -> None:
        """Without autojump, time moves only by ``advance``."""
        clock = VirtualClock()
        woke: list[float] = []

        async def nap() -> None:
            await clock.sleep(5.0)
            woke.append(clock.monotonic())

        with anyio.move_on_after(1.0):  # a real-time guard: the test fails, not hangs
            async with anyio.create_task_group() as tg:
                tg.start_soon(nap)
                await anyio.lowlevel.checkpoint()
                clock.advance(4.0)
                for _ in range(3):
                    await anyio.lowlevel.checkpoint()
                assert woke == []
                clock.advance(1.0)
        assert woke == [5.0]
        with pytest.raises(ValueError, match="backwards"):
            clock.advance(-1.0)


class TestRateLimiter:
    async def test_starts_empty(self, clock: FakeClock) -> None:
        """With burst=1 the first two requests are one emission interval apart, not a bucketful."""
        limiter = RateLimiter(4.0, clock=clock)
        times = []
        for _ in range(3):
            await limiter.acquire()
            times.append(clock.monotonic())
        assert times == pytest.approx([0.0, 0.25, 0.5])

    async def test_burst_goes_at_once_then_the_rate_applies(self, clock: FakeClock) -> None:
        """``burst`` requests pass immediately, no more; then one per interval."""
        limiter = RateLimiter(1.0, burst=3, clock=clock)
        times = []
        for _ in range(5):
            await limiter.acquire()
            times.append(clock.monotonic())
        assert times == pytest.approx([0.0, 0.0, 0.0, 1.0, 2.0])

    @pytest.mark.parametrize(("rate", "burst"), [(10.0, 1), (3.0, 5), (250.0, 1), (0.5, 2)])
    async def test_steady_rate_is_exact_over_1000_requests(
        self, clock: FakeClock, rate: float, burst: int
    ) -> None:
        """After the initial burst, 1000 acquisitions run at the configured rate within 1%."""
        limiter = RateLimiter(rate, burst=burst, clock=clock)
        times = []
        for _ in range(1000 + burst - 1):
            await limiter.acquire()
            times.append(clock.monotonic())
        achieved = 999 / (times[-1] - times[burst - 1])
        assert achieved == pytest.approx(rate, rel=0.01)

    async def test_concurrent_waiters_share_the_rate(self) -> None:
        """100 tasks × 10 requests at 20/s take 999/20 s of virtual time and never go faster."""
        clock = VirtualClock()
        limiter = RateLimiter(20.0, clock=clock)
        times: list[float] = []

        async def worker() -> None:
            for _ in range(10):
                async with limiter:
                    times.append(clock.monotonic())

        async with clock.autojump():
            await _gather(*[worker] * 100)
        assert len(times) == 1000
        assert times[-1] == pytest.approx(999 / 20)
        assert min(b - a for a, b in itertools.pairwise(times)) == pytest.approx(0.05)

    async def test_defer_delays_every_waiter(self) -> None:
        """A 429 at t=0.5 with Retry-After 10 holds back all queued requests until 10.5, then paces them."""
        clock = VirtualClock()
        limiter = RateLimiter(1.0, clock=clock)
        passed: list[float] = []

        async def request() -> None:
            await limiter.acquire()
            passed.append(clock.monotonic())

        async def rate_limited() -> None:
            await clock.sleep(0.5)
            limiter.defer(10.0)

        async with clock.autojump():
            await _gather(*[request] * 5, rate_limited)
        assert passed == pytest.approx([0.0, 10.5, 11.5, 12.5, 13.5])

    async def test_defer_pauses_an_idle_limiter_and_never_shortens(self, clock: FakeClock) -> None:
        """A pause applies to the next caller too; a shorter later pause does not cut it."""
        limiter = RateLimiter(None, clock=clock)
        limiter.defer(5.0)
        limiter.defer(1.0)
        limiter.defer(-3.0)
        assert limiter.delay() == pytest.approx(5.0)
        await limiter.acquire()
        assert clock.monotonic() == pytest.approx(5.0)
        assert limiter.delay() == 0.0

    @pytest.mark.parametrize("burst", [1, 4])
    async def test_waiters_are_served_first_come_first_served(self, burst: int) -> None:
        """Forty tasks that arrive in order pass in that order, burst or not."""
        clock = VirtualClock()
        limiter = RateLimiter(5.0, burst=burst, clock=clock)
        arrived: list[int] = []
        passed: list[int] = []

        def make(i: int) -> Callable[[], Coroutine[Any, Any, None]]:
            async def request() -> None:
                await clock.sleep(i * 0.01)  # staggered arrivals, all inside the first slot
                arrived.append(i)
                await limiter.acquire()
                passed.append(i)

            return request

        async with clock.autojump():
            await _gather(*[make(i) for i in reversed(range(40))])  # started in reverse on purpose
        assert passed == arrived == list(range(40))

    async def test_unlimited_never_sleeps(self) -> None:
        """``rate_per_s=None`` passes 1000 requests without touching the clock's sleep."""
        limiter = RateLimiter(None, clock=NoSleepClock())
        for _ in range(1000):
            await limiter.acquire()
        assert limiter.delay() == 0.0

    async def test_a_cancelled_waiter_takes_no_slot(self) -> None:
        """A waiter cancelled in the queue leaves its turn to the next one."""
        clock = VirtualClock()
        limiter = RateLimiter(1.0, clock=clock)
        passed: list[tuple[str, float]] = []

        async def request(name: str, after: float) -> None:
            await clock.sleep(after)
            await limiter.acquire()
            passed.append((name, clock.monotonic()))

        async with clock.autojump(), anyio.create_task_group() as tg:
            tg.start_soon(request, "a", 0.0)
            async with anyio.create_task_group() as doomed:
                doomed.start_soon(request, "b", 0.1)
                await clock.sleep(0.5)
                doomed.cancel_scope.cancel()
            tg.start_soon(request, "c", 0.1)
        assert passed == [("a", 0.0), ("c", 1.0)]

    @pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (math.inf, 1), (1.0, 0)])
    def test_impossible_settings_are_refused(self, clock: FakeClock, rate: float, burst: int) -> None:
        """A rate that is not positive and finite, or a burst below one, is a ValueError."""
        with pytest.raises(ValueError, match="must"):
            RateLimiter(rate, burst=burst, clock=clock)


@dataclass
class Spy:
    """Counts concurrent holders (aiometer's Spy) and any admission above the target."""

    limit: ActiveJobLimit
    holders: int = 0
    max_holders: int = 0
    over_target: list[tuple[int, int]] = field(default_factory=list)

    async def hold(self, clock: VirtualClock, seconds: float) -> None:
        async with self.limit:
            self.holders += 1
            self.max_holders = max(self.max_holders, self.holders)
            if self.holders > self.limit.target:
                self.over_target.append((self.holders, self.limit.target))
            self.limit.on_accepted()
            await clock.sleep(seconds)
            self.holders -= 1


async def _saturate(limit: ActiveJobLimit) -> None:
    """Fill the limit up to its target (no waiters, so this never blocks)."""
    while limit.in_use < limit.target:
        await limit.acquire()


class TestActiveJobLimit:
    async def test_holders_never_exceed_the_target(self) -> None:
        """300 jobs through a cap of 7, cut by a 429 halfway: no admission ever goes above the target."""
        clock = VirtualClock()
        limit = ActiveJobLimit(7, beta=0.5, clock=clock)
        spy = Spy(limit)
        rng = random.Random(3)

        async def squeeze() -> None:
            await clock.sleep(20.0)
            assert limit.in_use == 7
            assert limit.on_rate_limited()
            assert limit.target == 4  # floor(0.5 * (7 + 1))

        async with clock.autojump(), anyio.create_task_group() as tg:
            tg.start_soon(squeeze)
            for _ in range(300):
                tg.start_soon(spy.hold, clock, rng.uniform(0.5, 3.0))
        assert spy.over_target == []
        assert spy.max_holders == limit.peak_in_use == 7
        assert limit.decreases == 1
        assert limit.in_use == 0

    async def test_a_429_aims_just_below_what_the_server_held(self, clock: FakeClock) -> None:
        """Told 100, 20 jobs accepted and the 21st refused: the target becomes floor(0.9 * 21)."""
        limit = ActiveJobLimit(100, clock=clock)
        for _ in range(21):
            await limit.acquire()
        for _ in range(20):
            limit.on_accepted()
        assert limit.on_rate_limited() is True
        assert (limit.target, limit.decreases) == (18, 1)

    async def test_429s_count_once_per_cooldown_and_never_compound(self, clock: FakeClock) -> None:
        """A burst counts once; a later 429 cuts again only if the server held fewer; min_active holds."""
        limit = ActiveJobLimit(20, min_active=4, cooldown_s=1.0, clock=clock)
        for _ in range(11):
            await limit.acquire()
        for _ in range(10):
            limit.on_accepted()
        assert limit.on_rate_limited() is True
        assert [limit.on_rate_limited() for _ in range(5)] == [False] * 5
        assert (limit.target, limit.decreases) == (9, 1)
        clock.advance(1.0)
        assert limit.on_rate_limited() is False  # a straggler from before the cut: same server count
        for _ in range(4):
            limit.release()  # four jobs finished: 7 slots, all accepted
        clock.advance(1.0)
        assert limit.on_rate_limited() is True
        assert limit.target == 7  # floor(0.9 * (7 + 1))
        for _ in range(6):
            limit.release()
        clock.advance(1.0)
        assert limit.on_rate_limited() is True
        assert (limit.target, limit.decreases) == (4, 3)

    async def test_grows_back_by_probing_only_when_saturated(self, clock: FakeClock) -> None:
        """+1 after ``target`` accepted submissions at full use; below the target, accepts count nothing."""
        limit = ActiveJobLimit(8, initial=4, clock=clock)
        for _ in range(3):
            await limit.acquire()
        for _ in range(50):
            limit.on_accepted()  # 3 of 4 in use: idle capacity, no probing
        assert limit.target == 4
        await limit.acquire()
        for _ in range(3):
            limit.on_accepted()
        assert limit.target == 4
        limit.on_accepted()
        assert limit.target == 5
        for _ in range(100):
            await _saturate(limit)
            limit.on_accepted()
        assert limit.target == 8 == limit.max_active

    async def test_probing_slows_down_at_the_level_the_server_refused(self, clock: FakeClock) -> None:
        """After a 429 at 32 held, 29→32 takes 29+30+31 accepts, and 32→33 takes 4·32 more."""
        limit = ActiveJobLimit(64, clock=clock)
        for _ in range(33):
            await limit.acquire()
        for _ in range(32):
            limit.on_accepted()
        limit.on_rate_limited()
        assert limit.target == 29
        for _ in range(4):
            limit.release()
        steps: dict[int, int] = {}
        accepts = 0
        while limit.target < 33:
            await _saturate(limit)
            limit.on_accepted()
            accepts += 1
            steps.setdefault(limit.target, accepts)
        assert steps == {29: 1, 30: 29, 31: 59, 32: 90, 33: 218}

    async def test_surplus_slots_go_back_before_the_post(self, clock: FakeClock) -> None:
        """After a cut, holders that have not submitted give back exactly the surplus."""
        limit = ActiveJobLimit(10, clock=clock)
        for _ in range(10):
            await limit.acquire()
        for _ in range(5):
            limit.on_accepted()
        limit.on_rate_limited()  # the sixth was refused
        assert limit.target == 5
        assert [limit.release_if_over_target() for _ in range(5)] == [True] * 5
        assert limit.release_if_over_target() is False
        assert limit.in_use == 5

    async def test_a_raised_target_admits_a_waiter(self) -> None:
        """A probe that raises the target hands the new slot to the oldest waiter at once."""
        clock = VirtualClock()
        limit = ActiveJobLimit(3, initial=1, clock=clock)
        got: list[float] = []

        async def waiter() -> None:
            await limit.acquire()
            got.append(clock.monotonic())

        async with clock.autojump(), anyio.create_task_group() as tg:
            await limit.acquire()
            tg.start_soon(waiter)
            await clock.sleep(2.0)
            limit.on_accepted()
        assert got == [2.0]
        assert limit.in_use == 2

    async def test_cancelled_waiters_leak_no_slot(self) -> None:
        """Holders cancelled while queued, or just after a slot was handed to one, leave nothing held."""
        clock = VirtualClock()
        limit = ActiveJobLimit(1, clock=clock)

        async def holder() -> None:
            async with limit:
                await clock.sleep(100.0)

        async with clock.autojump():
            await limit.acquire()
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                tg.start_soon(holder)
                await clock.sleep(1.0)
                limit.release()  # hands the slot to the first holder…
                tg.cancel_scope.cancel()  # …which is cancelled before it runs
        assert limit.in_use == 0
        await limit.acquire()
        assert limit.in_use == 1

    async def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on(self, clock: FakeClock) -> None:
        """A waiter whose task is cancelled after the hand-over gives the slot to the next waiter."""
        limit = ActiveJobLimit(1, clock=clock)
        await limit.acquire()
        first = asyncio.create_task(limit.acquire())
        second = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)  # both are queued now
        limit.release()  # the slot is handed to `first`…
        first.cancel()  # …whose wait then raises CancelledError
        with pytest.raises(asyncio.CancelledError):
            await first
        await second
        assert limit.in_use == 1

    async def test_release_without_acquire_is_a_bug(self, clock: FakeClock) -> None:
        """Over-releasing raises instead of silently growing capacity."""
        limit = ActiveJobLimit(2, clock=clock)
        with pytest.raises(RuntimeError, match="without a matching"):
            limit.release()

    @pytest.mark.parametrize(
        ("max_active", "min_active", "initial", "beta"),
        [(0, 1, None, 0.9), (4, 5, None, 0.9), (4, 1, 9, 0.9), (4, 2, 1, 0.9), (4, 1, None, 1.0)],
    )
    def test_impossible_settings_are_refused(
        self, clock: FakeClock, max_active: int, min_active: int, initial: int | None, beta: float
    ) -> None:
        """Bounds out of order, an initial target outside them, or beta outside (0, 1) is a ValueError."""
        with pytest.raises(ValueError, match=r"must|need"):
            ActiveJobLimit(max_active, min_active=min_active, initial=initial, beta=beta, clock=clock)


class HiddenCapServer:
    """A fake API that accepts at most ``cap`` active jobs and answers 429 beyond that."""

    def __init__(self, cap: int, clock: VirtualClock) -> None:
        self.cap = cap
        self.clock = clock
        self.active = 0
        self.accepted = 0
        self.rejected = 0
        self._area = 0.0  # ∫ active dt
        self._since = 0.0

    def _mark(self) -> None:
        now = self.clock.monotonic()
        self._area += self.active * (now - self._since)
        self._since = now

    def submit(self) -> None:
        if self.active >= self.cap:
            self.rejected += 1
            raise RateLimitedError("too many active jobs", status=429)
        self._mark()
        self.active += 1
        self.accepted += 1

    def finish(self) -> None:
        self._mark()
        self.active -= 1

    def mean_active(self) -> float:
        self._mark()
        return self._area / self._since


class Revoked(Exception):
    """A surplus slot went back before its POST: queue the unit again."""


@pytest.mark.parametrize("give_back", [True, False], ids=["give-back", "no-give-back"])
async def test_settles_near_a_hidden_server_cap(give_back: bool) -> None:
    """Told 256, against a server that allows 32: 2000 jobs settle near 32 with few 429s.

    Each unit takes a slot, then a submit token, then POSTs; a 429 pauses every
    submitter (``defer``) for the refused unit's backoff. ``give-back`` is the
    recommended flow (``release_if_over_target`` before the POST).
    """
    clock = VirtualClock()
    rng = random.Random(11)
    server = HiddenCapServer(32, clock)
    limit = ActiveJobLimit(256, clock=clock)
    submits = RateLimiter(20.0, clock=clock)
    policy = RetryPolicy(base_s=0.5, cap_s=8.0, max_attempts=1000, deadline_s=None)
    in_use: list[int] = []

    async def submit_once() -> float:
        await limit.acquire()
        try:
            await submits.acquire()
            if give_back and limit.release_if_over_target():
                raise Revoked
            server.submit()
        except RateLimitedError:
            limit.on_rate_limited()
            limit.release()
            raise
        limit.on_accepted()
        return rng.uniform(5.0, 20.0)

    async def unit() -> None:
        while True:
            try:
                duration = await retrying(
                    submit_once,
                    policy=policy,
                    clock=clock,
                    rng=rng,
                    on_retry=lambda exc, attempt, delay: submits.defer(delay),
                )
                break
            except Revoked:
                continue
        await clock.sleep(duration)
        server.finish()
        limit.release()

    async def sample() -> None:
        """Once a second, from t=60 s while units are still being submitted."""
        while server.accepted < 2000:
            await clock.sleep(1.0)
            if clock.monotonic() > 60:
                in_use.append(limit.in_use)

    async with clock.autojump(), anyio.create_task_group() as outer:
        outer.start_soon(sample)
        await _gather(*[unit] * 2000)

    mean_in_use = sum(in_use) / len(in_use)
    per_unit = server.rejected / 2000
    print(
        f"\nhidden cap 32, max_active 256, {'' if give_back else 'no '}give-back: "
        f"{clock.monotonic():.0f}s virtual; mean server-active {server.mean_active():.1f}; "
        f"steady mean in_use {mean_in_use:.1f}; peak in_use {limit.peak_in_use}; "
        f"final target {limit.target}; 429s {server.rejected} ({per_unit:.3f}/unit); "
        f"decreases {limit.decreases}"
    )
    assert server.accepted == 2000
    assert 28.0 <= server.mean_active() <= 32.0
    assert 28.0 <= mean_in_use <= 34.0
    assert per_unit <= (0.02 if give_back else 0.2)


@dataclass
class Bucket:
    """The server side of a request-rate limit: a token bucket of ``rate`` a second, ``size`` deep."""

    rate: float
    size: float
    tokens: float = 0.0
    at: float = 0.0
    admitted: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = self.size

    def admit(self, now: float) -> bool:
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.admitted.append(now)
            return True
        self.refused.append(now)
        return False


async def _drive(
    pacer: RequestPacer,
    clock: VirtualClock,
    server: Bucket,
    *,
    seconds: float,
    workers: int = 40,
    get_share: float = 0.5,
    rtt_s: float = 0.01,
) -> None:
    """``workers`` tasks send requests as fast as the pacer lets them, for ``seconds`` of virtual time."""
    rng = random.Random(7)

    async def worker() -> None:
        while clock.monotonic() < seconds:
            await pacer.acquire()
            method = "GET" if rng.random() < get_share else "POST"
            ok = server.admit(clock.monotonic())
            await clock.sleep(rtt_s)
            pacer.on_answer(method, 200 if ok else 429)
            if not ok:
                await clock.sleep(1.0)  # the worker's own Retry-After

    async with clock.autojump(), anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)


class TestRequestPacer:
    """Against a simulated token bucket in virtual time: learn the rate, then stay just under it."""

    async def test_learns_the_limit_and_stops_being_refused(self) -> None:
        clock = VirtualClock()
        pacer = RequestPacer(clock=clock)
        server = Bucket(rate=20.0, size=20.0)
        await _drive(pacer, clock, server, seconds=60.0)
        assert pacer.estimate is not None and 19.0 <= pacer.estimate <= 21.0
        assert [t for t in server.refused if t > 5.0] == []  # nothing refused after the first seconds
        late = [t for t in server.admitted if 5.0 <= t < 60.0]
        assert len(late) / 55.0 >= 0.95 * 20.0
        assert len(server.refused) <= 60  # 20 of the first 40 at t=0, the rest while learning

    @pytest.mark.parametrize("limit", [3.0, 50.0, 200.0])
    async def test_other_limits(self, limit: float) -> None:
        clock = VirtualClock()
        pacer = RequestPacer(clock=clock)
        server = Bucket(rate=limit, size=max(1.0, limit))
        await _drive(pacer, clock, server, seconds=40.0, workers=int(limit) + 20, rtt_s=0.002)
        assert pacer.estimate is not None and abs(pacer.estimate - limit) <= 0.06 * limit + 0.5
        assert [t for t in server.refused if t > 10.0] == []

    async def test_no_limit_means_no_pacing(self) -> None:
        clock = VirtualClock()
        pacer = RequestPacer(clock=clock)
        server = Bucket(rate=1e9, size=1e9)
        await _drive(pacer, clock, server, seconds=5.0, workers=5)
        assert pacer.rate is None and pacer.estimate is None

    async def test_refused_submissions_alone_do_not_start_pacing(self) -> None:
        """A POST can be refused for the job cap; only a refused GET proves a rate limit."""
        clock = FakeClock()
        pacer = RequestPacer(clock=clock)
        for _ in range(10):
            await pacer.acquire()
            pacer.on_answer("POST", 429)
        assert pacer.rate is None and not pacer.explains_429()
        for _ in range(5):
            pacer.on_answer("GET", 200)
        pacer.on_answer("GET", 429)
        assert pacer.learning and pacer.explains_429() and pacer.rate is not None
        clock.advance(2.5)
        assert pacer.learning and pacer.explains_429()

    async def test_learning_gives_up_without_a_second_refusal(self) -> None:
        clock = FakeClock()
        calls: list[int] = []
        pacer = RequestPacer(clock=clock, on_rate_limit=lambda: calls.append(1))
        for _ in range(5):
            pacer.on_answer("GET", 200)
        pacer.on_answer("GET", 429)
        assert calls == [1] and pacer.learning
        for _ in range(12):
            clock.advance(0.5)
            pacer.on_answer("GET", 200)
        assert not pacer.learning and pacer.rate is None

    async def test_a_storm_of_refusals_with_nothing_admitted_does_not_throttle(self) -> None:
        """Forty 429s in a row (an outage): no rate can be measured, so none is imposed."""
        clock = FakeClock()
        pacer = RequestPacer(clock=clock)
        for _ in range(40):
            await pacer.acquire()
            pacer.on_answer("GET", 429)
            clock.advance(0.3)
        assert pacer.estimate is None
        assert pacer.rate is None or pacer.rate >= 1.0
        pacer.on_answer("GET", 200)
        clock.advance(10)
        pacer.on_answer("GET", 200)
        assert pacer.rate is None

    async def test_probes_upward_while_held_back_and_relearns_a_lower_limit(self) -> None:
        clock = VirtualClock()
        pacer = RequestPacer(clock=clock, probe_s=10.0, probe_step=0.05)
        server = Bucket(rate=20.0, size=20.0)
        await _drive(pacer, clock, server, seconds=30.0)
        first = pacer.estimate
        assert first is not None and pacer.rate is not None and pacer.rate > 0.97 * first  # probed up
        server.rate = 10.0  # the operator halves the limit
        await _drive(pacer, clock, server, seconds=60.0)
        assert pacer.estimate is not None and 9.0 <= pacer.estimate <= 11.0
        assert pacer.calibrations >= 2


class TestForgive:
    def test_cuts_the_rate_caused_are_undone(self) -> None:
        clock = FakeClock()
        limit = ActiveJobLimit(64, clock=clock)
        for _ in range(20):
            limit._take()
            limit.on_accepted()
        assert limit.on_rate_limited()
        assert limit.target < 64
        clock.advance(1.5)
        limit.on_rate_limited()
        limit.forgive()
        assert limit.target == 64

    def test_old_cuts_stand(self) -> None:
        clock = FakeClock()
        limit = ActiveJobLimit(64, clock=clock, forgive_s=10.0)
        for _ in range(20):
            limit._take()
            limit.on_accepted()
        limit.on_rate_limited()
        cut = limit.target
        clock.advance(11.0)
        limit.forgive()
        assert limit.target == cut
