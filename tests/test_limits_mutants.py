"""Throttling edges that mutation testing (``scripts/mutation``) found unguarded.

The broad behaviour tests live in ``test_ratelimit.py``; these pin the exact rules the
docstrings of :mod:`pipeline.engine.limits` promise, at their boundaries: how a pause
ends, when a 429 counts, when a late accept raises a cut, what the defaults are, and
when the pacer may learn, calibrate, give up or probe. All on ``FakeClock``, with
times that are exact in binary so boundaries are hit exactly.
"""

from __future__ import annotations

import math

import anyio
import anyio.lowlevel
import pytest

from pipeline.clock import FakeClock
from pipeline.engine.limits import ActiveJobLimit, RateLimiter, RequestPacer


class NoSleepClock(FakeClock):
    """A FakeClock that fails the test if anything sleeps on it."""

    async def sleep(self, seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s")


async def _times(limiter: RateLimiter, clock: FakeClock, n: int) -> list[float]:
    times = []
    for _ in range(n):
        await limiter.acquire()
        times.append(clock.monotonic())
    return times


class TestRateLimiterEdges:
    async def test_a_pause_ends_with_one_request_not_a_burst(self) -> None:
        """burst=4 at 1/s, a 10 s pause: requests at 10, 11, 12, never three at once (nor early)."""
        clock = FakeClock()
        limiter = RateLimiter(1.0, burst=4, clock=clock)
        limiter.defer(10.0)
        assert limiter.delay() == 10.0
        assert await _times(limiter, clock, 3) == [10.0, 11.0, 12.0]

    async def test_a_sub_second_pause_is_honoured(self) -> None:
        clock = FakeClock()
        limiter = RateLimiter(None, clock=clock)
        limiter.defer(0.5)
        assert await _times(limiter, clock, 2) == [0.5, 0.5]

    async def test_a_zero_pause_leaves_the_burst_alone(self) -> None:
        """``defer(0)`` (a 429 with ``Retry-After: 0``) does not spend the burst."""
        clock = NoSleepClock()
        limiter = RateLimiter(1.0, burst=3, clock=clock)
        limiter.defer(0.0)
        assert await _times(limiter, clock, 3) == [0.0, 0.0, 0.0]

    async def test_float_noise_is_not_waited_for(self) -> None:
        """A wait of one nanosecond is rounding, not a rate: the limiter does not sleep on it."""
        clock = NoSleepClock()
        limiter = RateLimiter(1e9, clock=clock)
        await _times(limiter, clock, 2)

    async def test_back_to_unlimited_never_sleeps(self) -> None:
        """``set_rate(None)`` after a rate: 100 requests at once."""
        clock = NoSleepClock()
        limiter = RateLimiter(None, clock=clock)
        limiter.set_rate(5.0)
        limiter.set_rate(None)
        await _times(limiter, clock, 100)
        assert limiter.rate_per_s is None

    async def test_set_rate_takes_a_sub_one_rate(self) -> None:
        clock = FakeClock()
        limiter = RateLimiter(None, clock=clock)
        limiter.set_rate(0.5)
        assert limiter.rate_per_s == 0.5
        assert await _times(limiter, clock, 3) == [0.0, 2.0, 4.0]

    def test_the_rate_given_is_the_rate_reported(self) -> None:
        assert RateLimiter(4.0, burst=2, clock=FakeClock()).rate_per_s == 4.0

    @pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
    def test_set_rate_refuses_what_the_constructor_refuses(self, rate: float) -> None:
        limiter = RateLimiter(1.0, clock=FakeClock())
        with pytest.raises(ValueError, match=r"^rate_per_s must be a positive number or None, not "):
            limiter.set_rate(rate)
        assert limiter.rate_per_s == 1.0


async def _held(limit: ActiveJobLimit, taken: int, accepted: int) -> None:
    for _ in range(taken):
        await limit.acquire()
    for _ in range(accepted):
        limit.on_accepted()


class TestActiveJobLimitEdges:
    def test_a_fresh_limit_holds_nothing(self) -> None:
        limit = ActiveJobLimit(8, clock=FakeClock())
        assert (limit.in_use, limit.peak_in_use, limit.decreases, limit.target) == (0, 0, 0, 8)

    def test_beta_zero_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"beta must lie in \(0, 1\)"):
            ActiveJobLimit(4, beta=0.0, clock=FakeClock())

    def test_over_release_names_the_bug(self) -> None:
        with pytest.raises(RuntimeError, match=r"^release\(\) without a matching acquire\(\)$"):
            ActiveJobLimit(2, clock=FakeClock()).release()

    async def test_the_default_cooldown_is_one_second(self) -> None:
        """Two 429s one second apart both count when the server held fewer the second time."""
        clock = FakeClock()
        limit = ActiveJobLimit(100, clock=clock)
        await _held(limit, 21, 20)
        assert limit.on_rate_limited() and limit.target == 18
        for _ in range(11):
            limit.release()
        clock.advance(0.5)
        assert not limit.on_rate_limited()
        clock.advance(0.5)
        assert limit.on_rate_limited() and limit.target == 9  # floor(0.9 * (10 + 1))

    @pytest.mark.parametrize(("after", "forgiven"), [(10.0, True), (10.5, False)])
    async def test_the_default_forgiveness_window_is_ten_seconds(self, after: float, forgiven: bool) -> None:
        clock = FakeClock()
        clock.advance(100.0)  # the window is measured from the cut, not from the clock's zero
        limit = ActiveJobLimit(64, clock=clock)
        await _held(limit, 20, 20)
        limit.on_rate_limited()
        assert limit.target == 18
        clock.advance(after)
        limit.forgive()
        assert limit.target == (64 if forgiven else 18)

    async def test_forgiveness_restores_the_target_before_the_whole_run_of_cuts(self) -> None:
        """Cuts at t=0 and t=10 are one run (10 s apart is within the window): forgive undoes both."""
        clock = FakeClock()
        limit = ActiveJobLimit(64, clock=clock)
        await _held(limit, 20, 20)
        limit.on_rate_limited()
        for _ in range(10):
            limit.release()
        clock.advance(10.0)
        assert limit.on_rate_limited() and limit.target == 9
        limit.forgive()
        assert limit.target == 64

    async def test_after_forgiveness_429s_cut_again_and_probing_is_fast_again(self) -> None:
        """Forgiveness forgets the refused level: 30 accepts at full use raise 30 to 31; a new 429 cuts."""
        clock = FakeClock()
        limit = ActiveJobLimit(100, initial=30, clock=clock)
        await _held(limit, 20, 20)
        limit.on_rate_limited()
        assert limit.target == 18
        limit.forgive()
        assert limit.target == 30
        limit.forgive()  # a second call has nothing left to undo
        assert limit.target == 30
        await _held(limit, 10, 0)
        for _ in range(29):
            limit.on_accepted()
        assert limit.target == 30
        limit.on_accepted()
        assert limit.target == 31
        clock.advance(2.0)
        assert limit.on_rate_limited() is True
        assert limit.target == 27  # floor(0.9 * (30 + 1))

    async def test_late_accepts_raise_a_cut_step_by_step(self) -> None:
        """A 429 handled before any accept of its burst cuts to 1; late accept k lifts it to k."""
        clock = FakeClock()
        clock.advance(100.0)
        limit = ActiveJobLimit(100, clock=clock)
        await _held(limit, 10, 0)
        assert limit.on_rate_limited() and limit.target == 1
        clock.advance(0.5)
        targets = []
        for _ in range(9):
            limit.on_accepted()
            targets.append(limit.target)
        assert targets == [1, 2, 3, 4, 5, 6, 7, 8, 9]

    async def test_an_accept_a_full_cooldown_after_the_cut_is_not_late(self) -> None:
        clock = FakeClock()
        limit = ActiveJobLimit(100, clock=clock)
        await _held(limit, 10, 0)
        limit.on_rate_limited()
        clock.advance(1.0)
        for _ in range(3):
            limit.on_accepted()
        assert limit.target == 1

    async def test_a_late_accept_that_changes_nothing_keeps_probing_slow(self) -> None:
        """Cut at 9 held; a late accept whose estimate is still 9 must not lift the refused level."""
        clock = FakeClock()
        limit = ActiveJobLimit(20, clock=clock)
        await _held(limit, 11, 9)
        assert limit.on_rate_limited() and limit.target == 9
        clock.advance(0.5)
        limit.on_accepted()  # held 10: floor(0.9 * 11) = 9, no change
        assert limit.target == 9
        clock.advance(1.0)
        for _ in range(30):
            limit.on_accepted()
        assert limit.target == 9  # at the refused level: 4·max(9, 8) = 36 accepts a step

    async def test_probing_below_eight_takes_thirty_two_accepts_at_the_refused_level(self) -> None:
        clock = FakeClock()
        limit = ActiveJobLimit(10, clock=clock)
        await _held(limit, 5, 4)
        assert limit.on_rate_limited() and limit.target == 4
        limit.release()
        clock.advance(2.0)
        for _ in range(31):
            limit.on_accepted()
        assert limit.target == 4
        limit.on_accepted()
        assert limit.target == 5


def _learning(pacer: RequestPacer) -> bool:
    """``pacer.learning``, read through a call so mypy does not narrow it between steps."""
    return pacer.learning


def _admit(pacer: RequestPacer, n: int) -> None:
    for _ in range(n):
        pacer.on_answer("GET", 200)


def _calibrated(clock: FakeClock, **kwargs: float) -> RequestPacer:
    """A pacer that learned 2 req/s: learning from t=0 (2 admitted), 4 admitted, refused again at t=2."""
    pacer = RequestPacer(clock=clock, **kwargs)  # type: ignore[arg-type]
    _admit(pacer, 2)
    pacer.on_answer("GET", 429)
    assert _learning(pacer) and pacer.rate == 3.0  # overdrive 1.5 × 2 admitted in the last second
    _admit(pacer, 4)
    clock.advance(2.0)
    pacer.on_answer("GET", 429)
    assert not _learning(pacer) and pacer.estimate == 2.0
    return pacer


class TestRequestPacerEdges:
    def test_a_fresh_pacer_knows_nothing(self) -> None:
        pacer = RequestPacer(clock=FakeClock())
        assert (pacer.rate, pacer.estimate, pacer.calibrations, _learning(pacer)) == (None, None, 0, False)
        assert not pacer.explains_429()

    @pytest.mark.parametrize(("admitted", "learns"), [(1, False), (2, True)])
    def test_learning_needs_two_admitted_in_the_last_second(self, admitted: int, learns: bool) -> None:
        pacer = RequestPacer(clock=FakeClock())
        _admit(pacer, admitted)
        pacer.on_answer("GET", 429)
        assert _learning(pacer) is learns
        assert pacer.rate == (3.0 if learns else None)

    def test_an_answer_exactly_one_second_old_is_still_in_the_last_second(self) -> None:
        clock = FakeClock()
        pacer = RequestPacer(clock=clock)
        _admit(pacer, 1)
        clock.advance(1.0)
        _admit(pacer, 1)
        pacer.on_answer("GET", 429)
        assert _learning(pacer)

    def test_an_answer_older_than_a_second_is_forgotten(self) -> None:
        clock = FakeClock()
        pacer = RequestPacer(clock=clock)
        _admit(pacer, 1)
        clock.advance(1.5)
        _admit(pacer, 1)
        pacer.on_answer("GET", 429)
        assert not _learning(pacer) and pacer.rate is None

    def test_a_get_429_is_evidence_for_exactly_two_seconds(self) -> None:
        clock = FakeClock()
        clock.advance(50.0)
        pacer = RequestPacer(clock=clock)
        pacer.on_answer("GET", 429)  # nothing admitted: no learning, but evidence
        assert not _learning(pacer)
        clock.advance(2.0)
        assert pacer.explains_429()
        clock.advance(0.25)
        assert not pacer.explains_429()

    def test_calibration_measures_after_exactly_two_seconds(self) -> None:
        pacer = _calibrated(FakeClock())
        assert pacer.calibrations == 1
        assert pacer.rate == pytest.approx(0.97 * 2.0)

    def test_a_refusal_before_two_seconds_keeps_learning(self) -> None:
        clock = FakeClock()
        clock.advance(100.0)
        pacer = RequestPacer(clock=clock)
        _admit(pacer, 2)
        pacer.on_answer("GET", 429)
        _admit(pacer, 4)
        clock.advance(1.5)
        pacer.on_answer("GET", 429)
        assert _learning(pacer) and pacer.estimate is None and pacer.rate == 3.0

    @pytest.mark.parametrize(("admitted", "measured"), [(2, False), (3, True)])
    def test_a_measurement_needs_three_admitted(self, admitted: int, measured: bool) -> None:
        """Fewer than ``min_admitted`` (3) between the refusals is an outage: nothing is learned."""
        clock = FakeClock()
        pacer = RequestPacer(clock=clock)
        _admit(pacer, 2)
        pacer.on_answer("GET", 429)
        _admit(pacer, admitted)
        clock.advance(2.0)
        pacer.on_answer("GET", 429)
        assert not _learning(pacer)
        assert pacer.estimate == (admitted / 2.0 if measured else None)
        assert pacer.rate == (pytest.approx(0.97 * admitted / 2.0) if measured else None)

    def test_a_failed_relearn_goes_back_to_the_old_pace(self) -> None:
        """Refused again with too little admitted: the pace learned before stands (0.97 × 2 req/s)."""
        clock = FakeClock()
        pacer = _calibrated(clock)
        clock.advance(0.5)
        _admit(pacer, 2)
        pacer.on_answer("GET", 429)
        assert _learning(pacer)
        clock.advance(2.0)
        pacer.on_answer("GET", 429)
        assert not _learning(pacer)
        assert (pacer.estimate, pacer.calibrations) == (2.0, 1)
        assert pacer.rate == pytest.approx(0.97 * 2.0)

    def test_giving_up_a_relearn_goes_back_to_the_old_pace(self) -> None:
        clock = FakeClock()
        pacer = _calibrated(clock)
        clock.advance(0.5)
        _admit(pacer, 2)
        pacer.on_answer("GET", 429)
        clock.advance(5.0)
        _admit(pacer, 1)  # exactly give_up_s later: still learning
        assert _learning(pacer)
        clock.advance(0.5)
        _admit(pacer, 1)
        assert not _learning(pacer)
        assert pacer.rate == pytest.approx(0.97 * 2.0)

    async def test_no_probing_while_learning(self) -> None:
        """Even with a short probe period, the learning pace is not raised while it is measured."""
        clock = FakeClock()
        pacer = RequestPacer(clock=clock, probe_s=1.0, probe_step=0.5)
        _admit(pacer, 2)
        pacer.on_answer("GET", 429)
        while clock.monotonic() < 4.0:
            await pacer.acquire()
            assert _learning(pacer) and pacer.rate == 3.0

    async def test_no_probing_when_no_request_waited(self) -> None:
        """Requests slower than the pace are never held back: 100 s of them do not raise the rate."""
        clock = FakeClock()
        pacer = _calibrated(clock, margin=1.0)
        for _ in range(100):
            clock.advance(1.0)
            await pacer.acquire()
            pacer.on_answer("GET", 200)
        assert pacer.rate == 2.0

    async def test_probing_starts_exactly_thirty_seconds_after_the_last_change(self) -> None:
        """Held back at 2 req/s since the calibration at t=2: at t=32 the rate rises by 2 %."""
        clock = FakeClock()
        pacer = _calibrated(clock, margin=1.0)
        clock.advance(29.5)
        await pacer.acquire()
        await pacer.acquire()  # waits 0.5 s: held back, and now t=32
        assert clock.monotonic() == 32.0 and pacer.rate == 2.0
        await pacer.acquire()
        assert pacer.rate == pytest.approx(2.04)

    async def test_a_recent_refused_submission_holds_the_rate(self) -> None:
        """A POST 429 at t=22 (job cap or rate, unknown): no probing until 30 s after it."""
        clock = FakeClock()
        pacer = _calibrated(clock, margin=1.0)
        clock.advance(20.0)
        pacer.on_answer("POST", 429)
        clock.advance(9.5)
        for _ in range(8):  # t=31.5 … 35, held back all along
            await pacer.acquire()
        assert clock.monotonic() >= 32.0 and pacer.rate == 2.0


async def test_a_newcomer_does_not_overtake_a_waiter_whose_pause_just_ended() -> None:
    """Unlimited but paused: the waiter that queued in the pause goes first, even when a newcomer
    arrives at the instant the pause ends (no pause left, but the queue is not empty yet)."""
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock)
    limiter.defer(1.0)
    order: list[str] = []

    async def waiter() -> None:
        await limiter.acquire()
        order.append("waiter")

    async def newcomer() -> None:
        while clock.monotonic() < 1.0:  # arrives once the waiter's sleep has ended the pause
            await anyio.lowlevel.checkpoint()
        await limiter.acquire()
        order.append("newcomer")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        tg.start_soon(newcomer)
    assert order == ["waiter", "newcomer"]
